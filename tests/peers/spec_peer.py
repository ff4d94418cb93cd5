#!/usr/bin/env python3
"""A Switchboard service written from docs/protocol.md alone (pyzmq, msgpack).

    spec_peer.py ENDPOINT SERVICE INSTANCE

Registers SERVICE as INSTANCE (answering the secret's challenge when SB_SECRET
is set), says ready, heartbeats, and answers:
  reverse {text}  -> {text: reversed, lang: "python"}
  anything else   -> error unknown_op
Prints "ready" on stdout once registered. Stops on SIGTERM, saying bye.
"""
import hashlib
import hmac
import os
import signal
import sys
import time

import msgpack
import zmq

V = 0x0102  # protocol 1.2


def pack(value):
    return msgpack.packb(value, use_bin_type=True)


def unpack(data):
    return msgpack.unpackb(data, raw=False)


def envelope(kind, **fields):
    env = {"v": V, "kind": kind}
    env.update({k: v for k, v in fields.items() if v not in (None, "", 0)})
    return pack(env)


def main():
    endpoint, service, instance = sys.argv[1:4]
    secret = os.environ.get("SB_SECRET", "").encode()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)

    hello = {"service": service, "instance": instance, "pid": os.getpid(), "credit": 8}
    # With a secret, challenge the broker: only one that proves the secret too
    # gets this peer registered (docs/protocol.md, "Registering").
    challenge = os.urandom(32) if secret else None
    if challenge is not None:
        hello["challenge"] = challenge
    sock.send(envelope("hello", **{"from": instance}, body=pack(hello)))
    broker_proven = False
    welcome = None
    deadline = time.time() + 10
    while welcome is None:
        if time.time() > deadline or not poller.poll(1000):
            sys.exit("no welcome from the broker")
        env = unpack(sock.recv_multipart()[-1])
        if env.get("kind") != "hello":
            continue
        if env.get("error"):
            sys.exit("refused: %r" % env["error"])
        answer = unpack(env["body"])
        if answer.get("accepted"):
            if challenge is not None and not broker_proven:
                sys.exit("the broker accepted without proving the secret: not our broker")
            welcome = answer
        elif answer.get("nonce") is not None:
            if challenge is not None:
                names = service.encode() + b"\0" + instance.encode()
                expected = hmac.new(
                    secret, b"sb-broker-v1" + challenge + answer["nonce"] + names, hashlib.sha256
                ).digest()
                if not hmac.compare_digest(expected, answer.get("proof") or b""):
                    sys.exit("the broker did not prove the secret: not our broker")
                broker_proven = True
            msg = b"sb-hello-v1" + answer["nonce"] + service.encode() + b"\0" + instance.encode()
            hello["proof"] = hmac.new(secret, msg, hashlib.sha256).digest()
            sock.send(envelope("hello", **{"from": instance}, body=pack(hello)))
    sock.send(envelope("ready", **{"from": instance}))
    print("ready", flush=True)

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    every = welcome.get("heartbeat_ms", 1000) / 1000.0
    next_beat = time.time() + every
    while not stopping:
        if time.time() >= next_beat:
            sock.send(envelope("heartbeat", **{"from": instance}))
            next_beat = time.time() + every
        if not poller.poll(100):
            continue
        frames = sock.recv_multipart()
        env = unpack(frames[-1])
        kind = env.get("kind")
        if kind == "bye":
            sys.exit("the broker forgot us: %r" % env.get("error"))
        if kind != "request" or len(frames) != 2:
            continue
        token = frames[0]
        reply = {"id": env.get("id", 0), "from": instance, "trace": env.get("trace", "")}
        if env.get("op") == "reverse":
            data = unpack(env["body"]) if env.get("body") else {}
            text = data.get("text", "") if isinstance(data, dict) else ""
            reply["body"] = pack({"text": text[::-1], "lang": "python"})
        else:
            reply["error"] = {"code": "unknown_op", "message": "%s has no op %r" % (service, env.get("op"))}
        sock.send_multipart([token, envelope("reply", **reply)])
    sock.send(envelope("bye", **{"from": instance}))
    time.sleep(0.1)


if __name__ == "__main__":
    main()
