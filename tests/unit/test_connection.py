

class RecordingChannel:
    def __init__(self):
        self.data = b""

    def sendall(self, chunk):
        self.data += bytes(chunk)


def test_a_big_stdin_is_sent_in_chunks_with_its_progress_past_sudos_password():
    from provision.connection import SEND_CHUNK, _send
    channel, heard = RecordingChannel(), []
    data = b"pw\n" + bytes(range(256)) * (SEND_CHUNK // 128 + 3)    # 2 chunks and a bit
    _send(channel, data, 3, lambda done, total: heard.append((done, total)))
    assert channel.data == data
    size = len(data) - 3
    assert heard == [(SEND_CHUNK - 3, size), (2 * SEND_CHUNK - 3, size), (size, size)]
