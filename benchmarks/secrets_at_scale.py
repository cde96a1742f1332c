"""Secrets at scale: set 1,000 secrets across 100 apps, then rotate the KEK.

Runs twice, with the KEK in a 0600 file and in SoftHSM (a PKCS#11 token), on
a fresh SQLite installation each time. Prints each phase's time and the
per-operation cost next to raw AES-256-GCM doing the same cryptographic work
in the same run (one encryption per value; one unwrap and wrap per key).

Usage: python benchmarks/secrets_at_scale.py [--apps 100] [--per-app 10] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select

from hangar.config.settings import ServerSettings
from hangar.controlplane.bootstrap import init_server
from hangar.controlplane.keys import rotate_kek
from hangar.controlplane.secrets import set_secrets
from hangar.controlplane.state import ControlPlane
from hangar.store.tables import App, Org


def raw_baseline(values: int, keys: int) -> tuple[float, float]:
    """Seconds for raw AES-GCM: encrypt ``values`` values; unwrap+wrap ``keys`` keys."""
    aead = AESGCM(AESGCM.generate_key(256))
    payload = secrets.token_bytes(48)
    start = time.perf_counter()
    for _ in range(values):
        aead.encrypt(os.urandom(12), payload, b"org\x00app\x00NAME\x001")
    encrypt = time.perf_counter() - start
    wrapped = [(n := os.urandom(12), aead.encrypt(n, os.urandom(32), b"p")) for _ in range(keys)]
    start = time.perf_counter()
    for nonce, blob in wrapped:
        plain = aead.decrypt(nonce, blob, b"p")
        aead.encrypt(os.urandom(12), plain, b"p")
    return encrypt, time.perf_counter() - start


def softhsm_settings(work: Path) -> dict[str, object]:
    (work / "tokens").mkdir()
    conf = work / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {work / 'tokens'}\nobjectstore.backend = file\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    pin = secrets.token_hex(8)
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            "bench",
            "--pin",
            pin,
            "--so-pin",
            secrets.token_hex(8),
        ],
        check=True,
        capture_output=True,
    )
    (work / "pin").write_text(pin)
    (work / "pin").chmod(0o600)
    return {
        "kek_provider": "pkcs11",
        "pkcs11_token": "bench",
        "pkcs11_pin_file": work / "pin",
    }


def run(label: str, work: Path, extra: dict[str, object], apps: int, per_app: int) -> None:
    settings = ServerSettings(data_dir=work / "data", **extra)  # type: ignore[arg-type]
    init_server(
        settings, org_name="acme", admin_email="b@example.com", token_ttl=dt.timedelta(hours=1)
    )
    cp = ControlPlane.open(settings)
    try:
        with cp.db.write() as session:
            org = session.execute(select(Org)).scalar_one()
            for n in range(apps):
                session.add(
                    App(
                        id=f"app_{n:016x}",
                        org_id=org.id,
                        name=f"app-{n}",
                        created_by="bench",
                        created_at=dt.datetime.now(dt.UTC),
                    )
                )
        start = time.perf_counter()
        for n in range(apps):
            with cp.db.write() as session:
                app = session.get(App, f"app_{n:016x}")
                assert app is not None
                values = [(f"SECRET_{i}", secrets.token_urlsafe(36)) for i in range(per_app)]
                set_secrets(session, cp.keyring, app, values, stage=True, actor="bench")
        set_seconds = time.perf_counter() - start
        start = time.perf_counter()
        done = rotate_kek(cp)
        rotate_seconds = time.perf_counter() - start
    finally:
        cp.close()
    total = apps * per_app
    raw_encrypt, raw_rewrap = raw_baseline(total, done.rewrapped)
    print(f"{label}:")
    print(
        f"  set {total} secrets in {apps} apps: {set_seconds:.2f}s, "
        f"{set_seconds / total * 1e6:.0f} us/secret; raw AES-GCM {raw_encrypt / total * 1e6:.1f} us"
        f" (ratio {set_seconds / raw_encrypt:.0f}x)"
    )
    print(
        f"  rotate the KEK, {done.rewrapped} wrapped keys re-wrapped: {rotate_seconds:.2f}s, "
        f"{rotate_seconds / done.rewrapped * 1e6:.0f} us/key; raw AES-GCM "
        f"{raw_rewrap / done.rewrapped * 1e6:.1f} us (ratio {rotate_seconds / raw_rewrap:.0f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--apps", type=int, default=100)
    parser.add_argument("--per-app", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: does it run at all")
    args = parser.parse_args()
    if args.quick:
        args.apps, args.per_app = 3, 2
    work = Path(tempfile.mkdtemp(prefix="hangar-bench-secrets-"))
    try:
        (work / "file").mkdir()
        run("KEK in a 0600 file", work / "file", {}, args.apps, args.per_app)
        if shutil.which("softhsm2-util"):
            (work / "hsm").mkdir()
            run(
                "KEK in SoftHSM (PKCS#11)",
                work / "hsm",
                softhsm_settings(work / "hsm"),
                args.apps,
                args.per_app,
            )
        else:
            print("SoftHSM: skipped, softhsm2-util is not installed (make deps)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
