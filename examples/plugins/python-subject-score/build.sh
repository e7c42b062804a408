#!/usr/bin/env bash
# Builds subject_score.wasm with componentize-py (pip install componentize-py==0.25.1).
set -euo pipefail
cd "$(dirname "$0")"
command -v componentize-py >/dev/null || python3 -m pip install --quiet componentize-py==0.25.1
# The world of the WIT in the tree, whatever its (patch) version.
version=$(sed -n 's/^package postern:filter@\(.*\);$/\1/p' ../../../wit/types.wit)
componentize-py -d ../../../wit -w "postern:filter/content-filter@$version" componentize app -o subject_score.wasm
