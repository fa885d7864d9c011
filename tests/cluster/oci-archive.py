#!/usr/bin/env python3
"""Writes an OCI image archive (an oci-layout tar, what `docker save` /
`buildah push oci-archive:` produce) from a root filesystem, without a
container engine, for `ctr images import`.

One layer: the rootfs as an uncompressed tar made by GNU tar (sorted names,
fixed mtimes, numeric owners kept), so the same rootfs gives the same digest.
The image name goes into both annotations containerd's importer reads:
`io.containerd.image.name` (the full reference) and
`org.opencontainers.image.ref.name` (the tag).

  oci-archive.py --rootfs DIR --name registry.k8s.io/pause:3.10.2 \
      --entrypoint '["/pause"]' --user 65535:65535 -o pause.tar
"""
import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile


def blob(data: bytes):
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rootfs", required=True)
    ap.add_argument("--name", required=True, help="full reference, REGISTRY/REPO:TAG")
    ap.add_argument("--entrypoint", default="null", help="JSON list")
    ap.add_argument("--cmd", default="null", help="JSON list")
    ap.add_argument("--user", default="")
    ap.add_argument("--workdir", default="")
    ap.add_argument("--env", action="append", default=[], help="KEY=value (repeatable)")
    ap.add_argument("--expose", action="append", default=[], help="PORT/PROTO (repeatable)")
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args()

    name = a.name
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"

    with tempfile.TemporaryDirectory() as tmp:
        layer_path = os.path.join(tmp, "layer.tar")
        subprocess.run(
            ["tar", "--sort=name", "--mtime=@0", "--numeric-owner", "--xattrs", "--xattrs-include=security.capability",
             "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
             "-C", a.rootfs, "-cf", layer_path, "."],
            check=True,
        )
        h = hashlib.sha256()
        with open(layer_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        layer_digest = "sha256:" + h.hexdigest()
        layer_size = os.path.getsize(layer_path)

        env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] + a.env
        cfg = {"Env": env}
        for key, val in (("Entrypoint", json.loads(a.entrypoint)), ("Cmd", json.loads(a.cmd))):
            if val is not None:
                cfg[key] = val
        if a.user:
            cfg["User"] = a.user
        if a.workdir:
            cfg["WorkingDir"] = a.workdir
        if a.expose:
            cfg["ExposedPorts"] = {p: {} for p in a.expose}
        config = {
            "created": "1970-01-01T00:00:00Z",
            "architecture": "amd64",
            "os": "linux",
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "sliceproxy tests/cluster/oci-archive.py"}],
        }
        config_digest, config_bytes = blob(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                       "size": len(config_bytes)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                        "size": layer_size}],
        }
        manifest_digest, manifest_bytes = blob(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
            }],
        }

        out_tmp = a.output + ".tmp"
        with tarfile.open(out_tmp, "w", format=tarfile.PAX_FORMAT) as out:
            def add_bytes(path, data):
                ti = tarfile.TarInfo(path)
                ti.size = len(data)
                ti.mode = 0o644
                out.addfile(ti, io.BytesIO(data))
            add_bytes("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            add_bytes("index.json", json.dumps(index, sort_keys=True).encode())
            add_bytes("blobs/sha256/" + config_digest[7:], config_bytes)
            add_bytes("blobs/sha256/" + manifest_digest[7:], manifest_bytes)
            out.add(layer_path, "blobs/sha256/" + layer_digest[7:])
        os.replace(out_tmp, a.output)
    print(f"{a.output}: {name} manifest {manifest_digest} layer {layer_size} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
