"""The SDK installed alone (`make test-sdk-alone`): it imports, it brought none of the server's
dependencies, and a service's type checker sees its signatures (py.typed)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

SERVER_ONLY = ("grpc", "etcd3aio", "jsonschema", "prometheus_client", "ruamel", "configcenter")
TYPING = Path(__file__).resolve().parent.parent / "tests" / "sdk" / "typing"


def mypy(file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(file)],
                          capture_output=True, text=True, cwd=file.parent)


def main() -> int:
    import configcenter_sdk

    present = [name for name in SERVER_ONLY if importlib.util.find_spec(name) is not None]
    if present:
        print(f"FAIL: installing the SDK also installed {present}", file=sys.stderr)
        return 1
    good, bad = mypy(TYPING / "uses_the_sdk.py"), mypy(TYPING / "misuses_the_sdk.py")
    if good.returncode != 0:
        print(f"FAIL: mypy --strict refuses a correct use of the SDK:\n{good.stdout}", file=sys.stderr)
        return 1
    if bad.returncode == 0 or bad.stdout.count("error:") != 2:
        print(f"FAIL: mypy --strict must refuse both misuses (signatures hidden?):\n{bad.stdout}", file=sys.stderr)
        return 1
    print(f"SDK alone: {configcenter_sdk.__name__} imports without {', '.join(SERVER_ONLY)}; "
          "mypy --strict sees its types")
    return 0


if __name__ == "__main__":
    sys.exit(main())
