#!/usr/bin/env python3
"""Mosquitto's dynamic-security file and a login check, for scripts/services.sh (ADR 0026).

  mqtt_dynsec.py write FILE SECRETS_DIR   the plugin's JSON: the admin and service logins
  mqtt_dynsec.py login HOST PORT USER PASSWORD_FILE [CLIENT_ID]
                                          exit 0 when the broker accepts the login

The JSON is written by us rather than by `mosquitto_ctrl dynsec init`: that command takes the
password on its command line (visible in `ps`) and exits 0 when it fails. The format is the
plugin's own (Mosquitto 2.0.11): PBKDF2-HMAC-SHA512, 101 iterations, a 12-byte salt.
"""

import base64
import hashlib
import json
import os
import socket
import struct
import sys

ADMIN = "otaledger-admin"
SERVICE = "otaledger-service"


def hashed(password: str) -> dict:
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101, 64)
    return {
        "salt": base64.b64encode(salt).decode(),
        "password": base64.b64encode(digest).decode(),
        "iterations": 101,
    }


def acl(kind: str, topic: str) -> dict:
    # `allow` defaults to false in the plugin: always said.
    return {"acltype": kind, "topic": topic, "priority": 0, "allow": True}


def write(path: str, secrets: str) -> None:
    read = lambda name: open(os.path.join(secrets, name)).read().strip()  # noqa: E731
    doc = {
        # Nothing is allowed by default. Devices have no roles here: the plugin defers to the
        # acl_file, whose %u patterns confine each device to its own topics.
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": [
            {
                "username": ADMIN,
                "textname": "otaledger: adds and removes device logins",
                "roles": [{"rolename": "otaledger-admin"}],
                **hashed(read("admin.password")),
            },
            {
                "username": SERVICE,
                "textname": "otaledger: the MQTT bridge and the command dispatcher",
                "roles": [{"rolename": "otaledger-service"}],
                **hashed(read("service.password")),
            },
        ],
        "groups": [],
        "roles": [
            {
                "rolename": "otaledger-admin",
                "acls": [
                    acl("publishClientSend", "$CONTROL/dynamic-security/#"),
                    acl("publishClientReceive", "$CONTROL/dynamic-security/#"),
                    acl("subscribePattern", "$CONTROL/dynamic-security/#"),
                ],
            },
            {
                "rolename": "otaledger-service",
                "acls": [
                    acl("publishClientSend", "#"),
                    acl("publishClientReceive", "#"),
                    acl("subscribePattern", "#"),
                    acl("unsubscribePattern", "#"),
                ],
            },
        ],
    }
    tmp = path + ".tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(doc, f, indent=2)
    os.replace(tmp, path)


def string(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def login(host: str, port: int, user: str, password_file: str, client_id: str = "") -> int:
    password = open(password_file).read().strip()
    # MQTT 3.1.1 CONNECT: clean session, user name and password, keep-alive 10 s.
    body = string("MQTT") + bytes([4, 0xC2]) + struct.pack(">H", 10)
    client_id = client_id or f"otaledger-selfcheck-{os.getpid()}"
    body += string(client_id) + string(user) + string(password)
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"\x10" + remaining(len(body)) + body)
        ack = s.recv(4)
        s.sendall(b"\xe0\x00")
    return 0 if len(ack) == 4 and ack[0] == 0x20 and ack[3] == 0 else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["write"] and len(sys.argv) == 4:
        write(sys.argv[2], sys.argv[3])
    elif sys.argv[1:2] == ["login"] and len(sys.argv) in (6, 7):
        sys.exit(login(sys.argv[2], int(sys.argv[3]), *sys.argv[4:]))
    else:
        sys.exit(__doc__)
