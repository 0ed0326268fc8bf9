#!/usr/bin/env python3
"""The native Redis baseline: SCAN the source and move keys server to server with
`MIGRATE host port "" 0 timeout COPY REPLACE AUTH2 … KEYS k1 … kN`, one call per SCAN page.

Reads OIM_REDIS_SRC_* / OIM_REDIS_DST_* from the environment (standalone target)."""

from __future__ import annotations

import os

import redis


def main() -> None:
    src = redis.Redis.from_url(os.environ["OIM_REDIS_SRC_URL"],
                               password=os.environ["OIM_REDIS_SRC_PASSWORD"])
    host, port = os.environ["OIM_REDIS_DST_URL"].split("://", 1)[1].split("/", 1)[0].split(":")
    password = os.environ["OIM_REDIS_DST_PASSWORD"]
    cursor = 0
    while True:
        cursor, keys = src.scan(cursor, count=1000)
        if keys:
            src.execute_command("MIGRATE", host, port, "", 0, 60000, "COPY", "REPLACE",
                                "AUTH", password, "KEYS", *keys)
        if cursor == 0:
            break


if __name__ == "__main__":
    main()
