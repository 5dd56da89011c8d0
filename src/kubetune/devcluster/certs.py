"""A throw-away PKI for the dev cluster, made with the ``openssl`` command line tool.

All keys are ECDSA P-256 (fast to generate). Files written into ``pki_dir``:

* ``ca.crt``/``ca.key`` - the cluster CA (signs serving and client certificates)
* ``apiserver.crt``/``.key`` - kube-apiserver serving cert (127.0.0.1, localhost, kubernetes.*)
* ``admin``, ``kube-controller-manager``, ``kube-scheduler``, ``kwok`` client certs
* ``sa.key``/``sa.pub`` - the ServiceAccount token signing key pair
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kubetune.devcluster.versions import DevClusterError

#: client identities: file stem -> (CN, O)
CLIENTS: dict[str, tuple[str, str | None]] = {
    "admin": ("kubetune-admin", "system:masters"),
    "kube-controller-manager": ("system:kube-controller-manager", None),
    "kube-scheduler": ("system:kube-scheduler", None),
    # KWOK plays the kubelet of every fake node (node and pod status, leases, events).
    "kwok": ("kwok-controller", "system:masters"),
    # the API server's client identity towards aggregated API servers
    "front-proxy-client": ("front-proxy-client", None),
}
FRONT_PROXY_CN = "front-proxy-client"

APISERVER_SANS = (
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
    "IP:127.0.0.1",
)


@dataclass(frozen=True)
class Pki:
    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def apiserver_crt(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def client_crt(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def client_key(self, name: str) -> Path:
        return self.dir / f"{name}.key"


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise DevClusterError("the openssl command line tool is required (apt-get install openssl)")
    proc = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DevClusterError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def _subject(cn: str, org: str | None) -> str:
    return (f"/O={org}" if org else "") + f"/CN={cn}"


def _leaf(pki: Pki, stem: str, cn: str, org: str | None, usage: str, sans: tuple[str, ...]) -> None:
    d = pki.dir
    ext = d / f"{stem}.ext"
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usage}",
    ]
    if sans:
        lines.append("subjectAltName=" + ",".join(sans))
    ext.write_text("\n".join(lines) + "\n")
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{stem}.key", "-out", f"{stem}.csr", "-subj", _subject(cn, org),
        cwd=d,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-set_serial", str(secrets.randbits(63)), "-days", "365", "-sha256",
        "-extfile", ext.name, "-out", f"{stem}.crt",
        cwd=d,
    )  # fmt: skip
    (d / f"{stem}.csr").unlink()
    ext.unlink()


def generate(pki_dir: Path) -> Pki:
    """Create a fresh CA, serving/client certificates and the SA signing key in ``pki_dir``."""
    pki_dir.mkdir(parents=True, exist_ok=True)
    pki_dir.chmod(0o700)
    pki = Pki(pki_dir)
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650", "-sha256",
        "-set_serial", str(secrets.randbits(63)),
        "-subj", "/CN=kubetune-dev-cluster-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=pki_dir,
    )  # fmt: skip
    _leaf(pki, "apiserver", "kube-apiserver", None, "serverAuth", APISERVER_SANS)
    for stem, (cn, org) in CLIENTS.items():
        _leaf(pki, stem, cn, org, "clientAuth", ())
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "sa.key",
        cwd=pki_dir,
    )  # fmt: skip
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki_dir)
    for key in pki_dir.glob("*.key"):
        key.chmod(0o600)
    return pki
