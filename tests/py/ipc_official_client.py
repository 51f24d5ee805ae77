"""Drive a Greengrass IPC server with AWS's official Python client (awsiotsdk V2).

Usage: ipc_official_client.py SOCKET TOKEN
Prints "SUBSCRIBED" once subscribed to configuration updates (the caller then changes the
configuration), then one JSON document of what every call returned.
"""
import json
import queue
import sys

from awsiot.eventstreamrpc import AccessDeniedError
from awsiot.greengrasscoreipc import connect
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc.model import (
    BinaryMessage,
    JsonMessage,
    PublishMessage,
    QOS,
    ResourceNotFoundError,
)

sock, token = sys.argv[1:3]
out = {}

try:
    connect(ipc_socket=sock, authtoken="NOTAVALIDTOKEN00", timeout=5)
    out["bad_token"] = "connected"
except AccessDeniedError as e:
    out["bad_token"] = "AccessDeniedError"
except Exception as e:  # noqa: BLE001 - report whatever else happened
    out["bad_token"] = type(e).__name__

client = GreengrassCoreIPCClientV2(client=connect(ipc_socket=sock, authtoken=token, timeout=10))
r = client.get_configuration(key_path=["bucket"])
out["get"] = {"componentName": r.component_name, "value": r.value}
for name in ("aws.greengrass.Nucleus", "aws.greengrass.NucleusLite"):
    try:
        r = client.get_configuration(component_name=name, key_path=["iotCredEndpoint"])
        out[name] = r.value
    except Exception as e:  # noqa: BLE001 - record what the server answered
        out[name] = {"type": type(e).__name__, "message": getattr(e, "message", str(e))}
r = client.get_configuration()
out["whole"] = r.value
try:
    client.get_configuration(key_path=["no", "such", "key"])
    out["missing"] = "no error"
except ResourceNotFoundError as e:
    out["missing"] = {"type": "ResourceNotFoundError", "message": e.message}

try:
    client.update_state(state="RUNNING")
    out["update_state"] = "ok"
except Exception as e:  # noqa: BLE001
    out["update_state"] = {"type": type(e).__name__, "message": getattr(e, "message", str(e))}
try:
    client.subscribe_to_component_updates(on_stream_event=lambda e: None)
    out["component_updates"] = "ok"
except Exception as e:  # noqa: BLE001
    out["component_updates"] = type(e).__name__
# A local subscriber of our own: what arrives of a binary message and of a 24-key JSON one.
received = queue.Queue()


def on_message(e):
    if e.binary_message is not None:
        received.put({"binary": e.binary_message.message.decode()})
    else:
        received.put({"json_keys": len(e.json_message.message)})


client.subscribe_to_topic(topic="probe/deliveries", on_stream_event=on_message)
client.publish_to_topic(topic="probe/deliveries", publish_message=PublishMessage(binary_message=BinaryMessage(message=b"{\"b\":1}")))
out["binary_delivered"] = received.get(timeout=5)
client.publish_to_topic(
    topic="probe/deliveries",
    publish_message=PublishMessage(json_message=JsonMessage(message={f"k{i}": i for i in range(24)})),
)
try:
    out["json24_delivered"] = received.get(timeout=1)
except queue.Empty:
    out["json24_delivered"] = None
client.publish_to_iot_core(topic_name="gg-s3-sync/py/status", qos=QOS.AT_LEAST_ONCE, payload=b"hello iot")
client.publish_to_topic(topic="gg-s3-sync/status", publish_message=PublishMessage(json_message=JsonMessage(message={"from": "python"})))

events = queue.Queue()
_, op = client.subscribe_to_configuration_update(
    key_path=[], on_stream_event=lambda e: events.put(e.configuration_update_event.key_path)
)
print("SUBSCRIBED", flush=True)
out["event_key_path"] = events.get(timeout=10)
op.close()
print(json.dumps(out), flush=True)
