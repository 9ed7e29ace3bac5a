#!/usr/bin/env bash
# Build the reference site and check that it documents the whole public API.
#
#   bash docs/build.sh [OUTDIR]          (default: docs/_build/html)
#
# Needs the docs extra (pip install '.[docs]') and an importable latchwire: the
# one installed in the active environment, or a checkout's src/ on PYTHONPATH
# (after python setup.py build_ext --inplace). Every Sphinx warning is an error,
# nitpicky mode included (docs/conf.py lists the references it ignores: the
# standard library's, which need intersphinx and so the network, and private
# names); the environment is rebuilt each time, so no warning hides in a cache.
set -euo pipefail

docs=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-$docs/_build/html}
python=${PYTHON:-python}

"$python" -c 'import latchwire, sys; print(f"documenting latchwire {latchwire.__version__} from {latchwire.__file__}", file=sys.stderr)'
"$python" -m sphinx -W --keep-going -n -E -a -q -b html -d "$out/.doctrees" "$docs" "$out"
"$python" "$docs/check_api_coverage.py" "$out"
echo "docs: $out/index.html"
