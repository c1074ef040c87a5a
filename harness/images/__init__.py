"""The embedded default guests: Debian kernels with a busybox initramfs, built on demand.

Nothing is imported here: `harness.images.model` (what an engine needs to know of an
image) must not bring the builder with it. The modules, one job each: `build` (the
steps in order; ensure_image), `apt`, `deb`, `modules`, `kernel`, `initramfs`, `cpio`,
`recipe`, `store` (the images in the cache), `tools` (running the host's tools),
`errors`, `environment` (the image an environment boots) and `model`.
"""
