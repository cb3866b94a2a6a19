"""Anchor for the code-context benchmark: `1+1` round trips through jupyter_client's blocking
client straight to a kernel (no server), timed like execd's: from sending execute_request until
both execute_reply and the iopub idle status for it have arrived. Prints p50 and p99 in ms."""
import statistics
import sys
import time

from jupyter_client import KernelManager


def main(n: int) -> None:
    km = KernelManager(kernel_name="python3")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    samples = []
    for i in range(n + 20):
        start = time.perf_counter()
        msg_id = kc.execute("1+1")
        replied = idle = False
        result = None
        while not (replied and idle):
            if not replied:
                reply = kc.get_shell_msg(timeout=10)
                replied = reply["parent_header"].get("msg_id") == msg_id
            msg = kc.get_iopub_msg(timeout=10)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "execute_result":
                result = msg["content"]["data"]["text/plain"]
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        elapsed = (time.perf_counter() - start) * 1000
        assert result == "2", result
        if i >= 20:  # warm-up
            samples.append(elapsed)
    kc.stop_channels()
    km.shutdown_kernel(now=True)
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    print(f"{statistics.median(samples):.3f} {p99:.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
