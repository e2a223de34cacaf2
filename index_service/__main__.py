"""``python -m index_service``: serve imagesearch.v1.IndexService."""

import sys

from imagesearch.service_main import run
from index_service.app import start
from index_service.settings import IndexSettings
from index_service.writer import StoreLocked

if __name__ == "__main__":
    sys.exit(run("index_service", IndexSettings, "INDEX_", start, __doc__, fatal=(StoreLocked,)))
