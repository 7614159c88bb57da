#!/usr/bin/env bash
# The build script ships inside the package (nvsentinel/devtools/devcluster/build-kube.sh), so `nvsentinel demo`
# can build the control plane from an installed wheel; this is the same script, for CI and by hand.
exec bash "$(dirname "$0")/../nvsentinel/devtools/devcluster/build-kube.sh" "$@"
