"""``python -m web_service.healthcheck``: exit 0 when the web face on this
machine answers /healthz (Docker HEALTHCHECK). Reads WEB_PORT and, when
WEB_TLS_CERT is set, asks over HTTPS (loopback: the certificate names the
public host, so it is not verified here)."""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request


def main() -> int:
    port = os.environ.get("WEB_PORT", "8080")
    context = None
    scheme = "http"
    if os.environ.get("WEB_TLS_CERT"):
        scheme = "https"
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(
            f"{scheme}://127.0.0.1:{port}/healthz", timeout=3, context=context
        ) as answer:
            ok = answer.status == 200
    except OSError as exc:
        print(f"NOT SERVING: {exc}")
        return 1
    print("SERVING" if ok else "NOT SERVING")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
