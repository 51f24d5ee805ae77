"""A second component on nucleus lite, written with AWS's Python IPC client (awsiotsdk):
records every message on the status and release topics and publishes a trigger when asked.

Environment: WATCH_OUT (a file: one JSON line per message received, {"topic": ..., "binary": bool,
"doc": ...}; WATCH_OUT.ready appears once subscribed), WATCH_TRIGGER (when this file appears, it
is removed and one message is published on gg-s3-sync/sync-now), WATCH_ROLLBACK (likewise; the
message is {"rollback": null}, as a JSON message).
"""
import json
import os
import time

from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc.model import JsonMessage, PublishMessage

out = os.environ["WATCH_OUT"]
ask = os.environ["WATCH_TRIGGER"]
rollback = os.environ.get("WATCH_ROLLBACK", "")
client = GreengrassCoreIPCClientV2()


def recorder(topic):
    def on_event(event):
        if event.binary_message is not None:
            record = {"binary": True, "doc": json.loads(event.binary_message.message)}
        else:
            record = {"binary": False, "doc": event.json_message.message}
        record["topic"] = topic
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")

    return on_event


for topic in ["gg-s3-sync/status", "gg-s3-sync/release"]:
    client.subscribe_to_topic(topic=topic, on_stream_event=recorder(topic))
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
    if rollback and os.path.exists(rollback):
        os.remove(rollback)
        client.publish_to_topic(
            topic="gg-s3-sync/sync-now",
            publish_message=PublishMessage(json_message=JsonMessage(message={"rollback": None})),
        )
        print("watcher: rollback published", flush=True)
    time.sleep(0.05)
