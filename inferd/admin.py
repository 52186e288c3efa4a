"""Client side of the admin routes, for `inferd reload`: stdlib HTTP only."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

# The key `inferd reload` presents: the admin key where the server has admin keys, else the API key.
ADMIN_KEY_VARIABLE = "INFERD_ADMIN_KEY"
API_KEY_VARIABLE = "INFERD_API_KEY"


def request_reload(base_url: str) -> int:
    # A JSON body: admin routes refuse requests a web page could send (see inferd.auth).
    request = urllib.request.Request(
        f"{base_url.rstrip('/')}/admin/reload", data=b"{}", method="POST", headers={"Content-Type": "application/json"}
    )
    key = os.environ.get(ADMIN_KEY_VARIABLE) or os.environ.get(API_KEY_VARIABLE)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            print(json.dumps(json.load(response), indent=2))
            return 0
    except urllib.error.HTTPError as error:
        print(f"inferd reload: {error.code}: {error.read().decode(errors='replace')}", file=sys.stderr)
        return 2 if error.code == 400 else 1
    except urllib.error.URLError as error:
        print(f"inferd reload: cannot reach {base_url}: {error.reason}", file=sys.stderr)
        return 1
