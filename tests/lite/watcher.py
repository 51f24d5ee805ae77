"""A second component on nucleus lite, written with AWS's Python IPC client (awsiotsdk):
records every message on the status topic and publishes a trigger when asked.

Environment: WATCH_OUT (a file: one JSON line per message received, {"binary": bool, "doc": ...};
WATCH_OUT.ready appears once subscribed), WATCH_TRIGGER (when this file appears, it is removed
and one message is published on gg-s3-sync/sync-now).
"""
import json
import os
import time

from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc.model import JsonMessage, PublishMessage

out = os.environ["WATCH_OUT"]
ask = os.environ["WATCH_TRIGGER"]
client = GreengrassCoreIPCClientV2()


def on_event(event):
    if event.binary_message is not None:
        record = {"binary": True, "doc": json.loads(event.binary_message.message)}
    else:
        record = {"binary": False, "doc": event.json_message.message}
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")


client.subscribe_to_topic(topic="gg-s3-sync/status", on_stream_event=on_event)
open(out + ".ready", "w").close()
print("watcher: subscribed", flush=True)
while True:
    if os.path.exists(ask):
        os.remove(ask)
        client.publish_to_topic(
            topic="gg-s3-sync/sync-now",
            publish_message=PublishMessage(json_message=JsonMessage(message={"from": "watcher"})),
        )
        print("watcher: trigger published", flush=True)
    time.sleep(0.05)
