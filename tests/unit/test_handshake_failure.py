"""A port that answers with something other than SSH: the host is UNREACHABLE with a reason, and
paramiko's own traceback (logged from its transport thread) never reaches the user."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading


def test_a_non_ssh_answer_is_unreachable_without_a_traceback(tmp_path):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    held = []

    def answer() -> None:
        server.settimeout(20)
        try:
            while True:
                conn, _ = server.accept()
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                held.append(conn)
        except OSError:
            pass
    threading.Thread(target=answer, daemon=True).start()
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(f"all:\n  hosts:\n    web: {{ansible_host: 127.0.0.1, "
                         f"ansible_port: {port}}}\n")
    try:
        done = subprocess.run([sys.executable, "-m", "provision", "exec", str(inventory),
                               "--connect-timeout", "3", "--known-hosts",
                               str(tmp_path / "known_hosts"), "--", "true"],
                              capture_output=True, text=True, timeout=60)
    finally:
        server.close()
    assert done.returncode == 4
    assert "UNREACHABLE web: cannot connect to 127.0.0.1" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr + done.stdout
