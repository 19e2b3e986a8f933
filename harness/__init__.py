"""What tests and benchmarks share to drive a real platform from outside.

- `harness.ports`: TCP ports reserved for this process (never picked by hand);
- `harness.slots`: the run slot (SFTEST_SLOT) and the Redis databases it selects;
- `harness.platform`: a platform (nginx + API node on reserved ports) and the pieces bench
  stacks build theirs from (node environment, API process, readiness);
- `harness.client`: register, log in, go live, a WebSocket viewer, an RTMP publisher (FFmpeg
  testsrc2), a blocking HTTP call and a keep-alive HTTP/1.1 client for load generators;
- `harness.measure`: percentiles (one definition), CPU and memory from /proc, progress lines.

Importable from the repository root: pytest's rootdir, and `bench/*.py` run as scripts (they
put the root on `sys.path`).
"""
