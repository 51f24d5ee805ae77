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
from awsiot.greengrasscoreipc.model import JsonMessage, PublishMessage, QOS, ResourceNotFoundError

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
r = client.get_configuration(component_name="aws.greengrass.Nucleus", key_path=["iotCredEndpoint"])
out["nucleus"] = r.value
r = client.get_configuration()
out["whole"] = r.value
try:
    client.get_configuration(key_path=["no", "such", "key"])
    out["missing"] = "no error"
except ResourceNotFoundError as e:
    out["missing"] = {"type": "ResourceNotFoundError", "message": e.message}

client.update_state(state="RUNNING")
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
