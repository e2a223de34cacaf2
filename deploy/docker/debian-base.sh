#!/bin/sh
# Makes a base image for the Dockerfile from Debian's own packages, for hosts
# that cannot reach Docker Hub (no python:3.11-slim): debootstrap a minimal
# Debian with Python 3.11 and its venv module, then `docker import` it.
#
#   sudo deploy/docker/debian-base.sh [TAG]        # default imagesearch-base:bookworm
#   make images BASE_IMAGE=imagesearch-base:bookworm
#
# SUITE (default bookworm: Python 3.11) and MIRROR (default: debootstrap's)
# choose what it installs from; DOCKER the docker CLI to use.
set -eu
tag=${1:-imagesearch-base:bookworm}
suite=${SUITE:-bookworm}
docker=${DOCKER:-docker}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT INT TERM
# shellcheck disable=SC2086  # MIRROR is one word or none
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$suite" "$root" ${MIRROR:-}
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
# An imported image has no configuration: give it the PATH and locale that
# python:*-slim has, so the Dockerfile's ENV PATH=/opt/venv/bin:$PATH works.
tar -C "$root" -c . | "$docker" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$tag"
echo "made $tag from Debian $suite"
