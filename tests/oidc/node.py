"""npm's oidc-provider (a certified OpenID provider), installed once into a cache and run.

The package comes from the npm registry with the machine's own npm, into
``~/.cache/hangar-tests/oidc-provider`` (or ``$HANGAR_TEST_CACHE``), the
first time a test needs it; ``provider.mjs`` beside this file configures it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

VERSION = "9.13.3"
SCRIPT = Path(__file__).with_name("provider.mjs")


def cache_dir() -> Path:
    base = os.environ.get("HANGAR_TEST_CACHE") or str(Path.home() / ".cache" / "hangar-tests")
    return Path(base) / f"oidc-provider-{VERSION}"


def install() -> Path:
    """The directory whose node_modules holds oidc-provider (installed if missing)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed for the OpenID provider tests: run `make deps`")
    where = cache_dir()
    if not (where / "node_modules" / "oidc-provider" / "package.json").exists():
        where.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [
                "npm",
                "install",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(where),
                f"oidc-provider@{VERSION}",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"npm install oidc-provider failed:\n{done.stderr[-2000:]}")
    return where


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def node_provider(redirect_uri: str, secret: str) -> Iterator[str]:
    """Run the provider; yields its issuer (http://localhost:PORT)."""
    where = install()
    port = _free_port()
    script = where / "provider.mjs"
    shutil.copyfile(SCRIPT, script)  # beside node_modules, so `import "oidc-provider"` resolves
    proc = subprocess.Popen(
        ["node", str(script), str(port), redirect_uri, secret],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    issuer = f"http://localhost:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{issuer}/.well-known/openid-configuration").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read() if proc.stdout else ""
                pytest.fail(f"oidc-provider did not start:\n{out[-2000:]}")
            time.sleep(0.1)
        yield issuer
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def log_in(authorize_url: str, login: str) -> str:
    """Play a person at the provider's own pages (log in, consent); where it sends them back."""
    with httpx.Client(follow_redirects=False, timeout=10) as browser:
        url = httpx.URL(authorize_url)
        response = browser.get(url)
        for _ in range(12):
            if response.status_code in (302, 303):
                target = url.join(response.headers["location"])
                if target.host != url.host:
                    return str(target)
                url = target
                response = browser.get(url)
                continue
            form = re.search(r'<form[^>]*action="([^"]+)"', response.text)
            if response.status_code != 200 or form is None:
                raise AssertionError(f"unexpected page from the provider: {response.text[:500]}")
            fields = dict(
                re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', response.text)
            )
            if 'name="login"' in response.text:
                fields.update(login=login, password="any")
            url = url.join(form.group(1))
            response = browser.post(url, data=fields)
        raise AssertionError("the provider did not send the browser back")
