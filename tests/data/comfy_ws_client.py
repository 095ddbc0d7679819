#!/usr/bin/env python3
"""A third-party ComfyUI API client, as people write them from ComfyUI's websocket example.

It knows nothing about Genesis: it queues an API-format prompt with POST /prompt, listens on
/ws?clientId=... until the server says ``executing`` with ``node: null`` for that prompt,
then reads GET /history/{prompt_id} and downloads every output image with GET /view.

    python comfy_ws_client.py HOST:PORT PROMPT.json OUTPUT_DIR

Prints a JSON summary: {"prompt_id": ..., "images": {node_id: [saved file, ...]}}.
"""
import json
import os
import sys
import urllib.parse
import urllib.request
import uuid

import websocket  # the websocket-client package

server_address = sys.argv[1]
client_id = str(uuid.uuid4())


def queue_prompt(prompt, prompt_id):
    payload = {"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id}
    data = json.dumps(payload).encode("utf-8")
    req = urllib.request.Request("http://{}/prompt".format(server_address), data=data)
    return json.loads(urllib.request.urlopen(req).read())


def get_image(filename, subfolder, folder_type):
    query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": folder_type})
    with urllib.request.urlopen("http://{}/view?{}".format(server_address, query)) as response:
        return response.read()


def get_history(prompt_id):
    with urllib.request.urlopen("http://{}/history/{}".format(server_address, prompt_id)) as response:
        return json.loads(response.read())


def get_images(ws, prompt):
    prompt_id = str(uuid.uuid4())
    queue_prompt(prompt, prompt_id)
    output_images = {}
    while True:
        out = ws.recv()
        if isinstance(out, str):
            message = json.loads(out)
            if message["type"] == "executing":
                data = message["data"]
                if data["node"] is None and data["prompt_id"] == prompt_id:
                    break  # execution is done
        else:
            continue  # previews are binary

    history = get_history(prompt_id)[prompt_id]
    for node_id in history["outputs"]:
        node_output = history["outputs"][node_id]
        images_output = []
        if "images" in node_output:
            for image in node_output["images"]:
                image_data = get_image(image["filename"], image["subfolder"], image["type"])
                images_output.append(image_data)
        output_images[node_id] = images_output
    return prompt_id, output_images


def main():
    with open(sys.argv[2]) as fh:
        prompt = json.load(fh)
    out_dir = sys.argv[3]
    ws = websocket.WebSocket()
    ws.connect("ws://{}/ws?clientId={}".format(server_address, client_id))
    prompt_id, images = get_images(ws, prompt)
    ws.close()
    saved = {}
    for node_id, datas in images.items():
        saved[node_id] = []
        for i, data in enumerate(datas):
            path = os.path.join(out_dir, "{}_{}.png".format(node_id, i))
            with open(path, "wb") as fh:
                fh.write(data)
            saved[node_id].append(path)
    print(json.dumps({"prompt_id": prompt_id, "images": saved}))


if __name__ == "__main__":
    main()
