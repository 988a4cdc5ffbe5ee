#!/bin/sh
# Builds drainer's virtual environment for the .deb; called by debian/rules.
#   venv.sh build   PYTHON BUILD_DIR                   drainer's wheel, with a hashed setuptools
#   venv.sh install PYTHON BUILD_DIR VENV_DIR PREFIX   the venv in VENV_DIR, for use at PREFIX
# Every download is checked against packaging/deb/*.lock (pip --require-hashes, wheels only), so two
# builds install the same bytes. Needs PyPI (or a mirror pip is configured for).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
action=$1
python=$2
build=$3
pip_flags="--disable-pip-version-check --no-input --require-hashes --only-binary=:all:"

case "$action" in
    build)
        rm -rf "$build"
        # The build tool venv gets pip from Debian's python3.11-venv (ensurepip, offline).
        "$python" -m venv "$build/tools"
        # shellcheck disable=SC2086 # pip_flags is a list of flags
        "$build/tools/bin/pip" install --quiet $pip_flags -r "$here/build-requirements.lock"
        "$build/tools/bin/pip" wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation \
            --wheel-dir "$build/wheels" "$here/../.."
        ;;
    install)
        venv=$4
        prefix=$5
        rm -rf "$venv"
        # No pip in the installed environment: nothing installs into it after the build.
        "$python" -m venv --without-pip "$venv"
        # shellcheck disable=SC2086
        "$build/tools/bin/pip" --python "$venv/bin/python" install --quiet --no-compile $pip_flags \
            -r "$here/requirements.lock"
        "$build/tools/bin/pip" --python "$venv/bin/python" install --quiet --no-compile \
            --disable-pip-version-check --no-deps --no-index "$build"/wheels/drainer-*.whl
        # The lock must satisfy drainer's own requirements (a lock older than pyproject.toml fails here).
        "$build/tools/bin/pip" --python "$venv/bin/python" check
        # The venv was made in the build tree: point its scripts and pyvenv.cfg at PREFIX.
        abs=$(cd "$venv" && pwd)
        grep -rlI --null -F "$abs" "$venv/bin" "$venv/pyvenv.cfg" | xargs -0 -r sed -i "s|$abs|$prefix|g"
        # Build paths and caches would make two builds differ.
        find "$venv" -name direct_url.json -delete
        find "$venv" -depth -type d -name __pycache__ -exec rm -rf {} +
        # RECORD files list what pip wrote: drop the deleted files, hash the relocated scripts again.
        "$venv/bin/python" - "$venv" <<'PY'
import base64, csv, hashlib, io, pathlib, sys
for record in pathlib.Path(sys.argv[1]).glob("lib/python3*/site-packages/*.dist-info/RECORD"):
    rows = []
    for row in csv.reader(io.StringIO(record.read_text())):
        path = record.parent.parent / row[0]
        if row[1] and not path.exists():
            continue
        if row[1] and path.is_file():
            data = path.read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            row = [row[0], f"sha256={digest}", str(len(data))]
        rows.append(row)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    record.write_text(out.getvalue())
PY
        rm -f "$venv/bin/Activate.ps1"
        # Headers for compiling extensions: none are compiled into this venv.
        rm -rf "$venv/include"
        # Library files are imported, never executed (certifi's wheel marks a test module executable).
        find "$venv/lib" -type f -perm /111 ! -name '*.so' ! -name '*.so.*' -exec chmod a-x {} +
        ;;
    *)
        echo "usage: venv.sh build|install ..." >&2
        exit 2
        ;;
esac
