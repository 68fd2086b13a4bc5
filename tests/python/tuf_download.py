"""Downloads one target from otaledger's image repository with python-tuf's ngclient, a TUF
client no one on this project wrote: it refreshes root (following rotations), timestamp,
snapshot and targets, checks every signature, threshold, version and expiry, and the target's
length and hashes. Used by tests/tests/releases.rs.

usage: tuf_download.py ROOT_JSON METADATA_URL TARGETS_URL TARGET_NAME OUT_FILE
The bearer token for the target's bytes comes from OTALEDGER_TOKEN (metadata is open).
Exit 0 with the file written; exit 1 with the error's class and message on stderr.
"""

import os
import sys
import tempfile
import urllib.error
import urllib.request

from tuf.ngclient import FetcherInterface, Updater
from tuf.api import exceptions


class BearerFetcher(FetcherInterface):
    """urllib with a bearer token; 403 and 404 as ngclient expects them."""

    def __init__(self, token):
        self.token = token

    def _fetch(self, url):
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
        try:
            resp = urllib.request.urlopen(req, timeout=30)
        except urllib.error.HTTPError as e:
            raise exceptions.DownloadHTTPError(str(e), e.code) from e
        except OSError as e:
            raise exceptions.DownloadError(str(e)) from e

        def chunks():
            with resp:
                while True:
                    data = resp.read(65536)
                    if not data:
                        return
                    yield data

        return chunks()


def main():
    root_file, metadata_url, targets_url, name, out = sys.argv[1:6]
    with tempfile.TemporaryDirectory() as meta:
        with open(root_file, "rb") as src, open(os.path.join(meta, "root.json"), "wb") as dst:
            dst.write(src.read())
        updater = Updater(
            metadata_dir=meta,
            metadata_base_url=metadata_url,
            target_base_url=targets_url,
            target_dir=os.path.dirname(os.path.abspath(out)),
            fetcher=BearerFetcher(os.environ.get("OTALEDGER_TOKEN", "")),
        )
        try:
            updater.refresh()
            info = updater.get_targetinfo(name)
            if info is None:
                print(f"TargetNotFound: {name}", file=sys.stderr)
                return 1
            updater.download_target(info, filepath=out)
        except Exception as e:  # noqa: BLE001 - the class is the test's evidence
            print(f"{type(e).__name__}: {e}", file=sys.stderr)
            return 1
        with open(os.path.join(meta, "root.json"), "rb") as f:
            import json

            version = json.load(f)["signed"]["version"]
        print(f"root version {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
