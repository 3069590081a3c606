"""The aiohttp API: routes, auth, rate limits, error model, WebSocket protocol."""
