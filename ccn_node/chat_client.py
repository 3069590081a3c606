"""`ccn-node chat`: a terminal client that talks to a node over its public API.

It starts a conversation (or resumes one by id), sends each line typed as a WebSocket
`message` frame and prints `delta` frames as they stream. `/end` ends the conversation,
`/quit` (or end of input) leaves it open to resume later.
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp


async def _read_line(prompt: str) -> str | None:
    loop = asyncio.get_running_loop()
    sys.stdout.write(prompt)
    sys.stdout.flush()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    return None if line == "" else line.rstrip("\n")


async def run_chat(url: str, token: str, *, session_id: str | None = None, title: str = "") -> int:
    headers = {"Authorization": f"Bearer {token}"}
    url = url.rstrip("/")
    async with aiohttp.ClientSession(headers=headers) as http:
        if session_id is None:
            async with http.post(f"{url}/api/v1/conversation/start", json={"title": title}) as resp:
                body = await resp.json()
                if resp.status != 201:
                    print(f"cannot start a conversation: {body.get('error', body)}", file=sys.stderr)
                    return 1
            session_id = body["session_id"]
            print(f"conversation {session_id} (resume with --session {session_id})")
        else:
            async with http.get(f"{url}/api/v1/conversation/{session_id}") as resp:
                body = await resp.json()
                if resp.status != 200:
                    print(f"cannot resume {session_id}: {body.get('error', body)}", file=sys.stderr)
                    return 1
            for m in body["messages"][-6:]:
                print(f"{'you' if m['role'] == 'user' else 'assistant'}> {m['content']}")
        ws_url = url.replace("http", "ws", 1) + f"/ws/conversation/{session_id}"
        async with http.ws_connect(ws_url) as ws:
            while True:
                line = await _read_line("you> ")
                if line is None or line.strip() == "/quit":
                    print(f"\nleaving {session_id} open")
                    return 0
                if line.strip() == "/end":
                    async with http.delete(f"{url}/api/v1/conversation/{session_id}") as resp:
                        print(f"ended: {(await resp.json())}")
                    return 0
                if not line.strip():
                    continue
                await ws.send_json({"type": "message", "content": line})
                sys.stdout.write("assistant> ")
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        print("\nconnection closed", file=sys.stderr)
                        return 1
                    frame = msg.json()
                    if frame["type"] == "delta":
                        sys.stdout.write(frame["content"])
                        sys.stdout.flush()
                    elif frame["type"] == "metrics":
                        print(f"\n  [ccc {frame.get('ccc', 0):.2f} · phi {frame.get('phi', 0):.2f}]")
                        break
                    elif frame["type"] == "error":
                        print(f"\n  [error {frame['code']}: {frame['message']}]")
                        break
    return 0
