"""Flower's configuration (read from the working directory by `celery -A app flower`).

Flower can run and revoke tasks, so it listens on this host only and asks for a password unless
told otherwise. Task names say what each task works on: `sync action · run 5a23ab01 · batch 3/12`.
"""

import os

# This host only, unless FLOWER_ADDRESS says otherwise (docker compose publishes it on 127.0.0.1).
address = os.environ.get("FLOWER_ADDRESS", "127.0.0.1")
port = int(os.environ.get("FLOWER_PORT", "5555"))
# user:password (several separated by commas); Flower refuses to start without one below.
basic_auth = [pair for pair in os.environ.get("FLOWER_BASIC_AUTH", "").split(",") if pair]
if not basic_auth and os.environ.get("FLOWER_UNAUTHENTICATED_API", "").lower() != "true":
    raise SystemExit(
        "flowerconfig: set FLOWER_BASIC_AUTH=user:password (Flower can run and revoke tasks); "
        "for a throwaway local session only, FLOWER_UNAUTHENTICATED_API=true"
    )
# The task list: the name carries the domain, run and batch; the kwargs carry the ids.
tasks_columns = "name,uuid,state,received,started,runtime,worker,kwargs,result"
natural_time = False
purge_offline_workers = 300
