"""The sink's JSON API over the store."""

from __future__ import annotations

from aiohttp import web

from .store import Store

MAX_LIMIT = 500


def make_app(store: Store) -> web.Application:
    app = web.Application()
    app["store"] = store
    app.router.add_get("/api/predictions", recent_predictions)
    app.router.add_get("/api/predictions/{tweet_id}/{media_key}", one_prediction)
    return app


async def recent_predictions(request: web.Request) -> web.Response:
    store: Store = request.app["store"]
    try:
        limit = min(int(request.query.get("limit", "50")), MAX_LIMIT)
        min_score = float(request.query.get("min_score", "0"))
    except ValueError:
        raise web.HTTPBadRequest(text="limit must be an integer and min_score a number") from None
    if limit < 1:
        raise web.HTTPBadRequest(text="limit must be at least 1")
    items = store.recent(limit=limit, hashtag=request.query.get("hashtag") or None, min_score=min_score)
    return web.json_response({"items": items, "count": len(items)})


async def one_prediction(request: web.Request) -> web.Response:
    store: Store = request.app["store"]
    item = store.get(request.match_info["tweet_id"], request.match_info["media_key"])
    if item is None:
        raise web.HTTPNotFound(text="no prediction for that tweet id and media key")
    return web.json_response(item)
