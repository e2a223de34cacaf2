"""``python -m gateway``: serve imagesearch.v1.GatewayService, the public API."""

import sys

from gateway.app import start
from gateway.settings import GatewaySettings
from imagesearch.service_main import run

if __name__ == "__main__":
    sys.exit(run("gateway", GatewaySettings, "GATEWAY_", start, __doc__))
