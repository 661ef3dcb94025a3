// The live gallery: recent predictions from /api/predictions, new ones from /api/events.
// Post text and user names are hostile input: they only ever go into textContent.

const PAGE_SIZE = 48;
const MAX_CARDS = 240;
const COUNTS_WINDOW_MS = 7 * 24 * 3600 * 1000;
const COUNTS_REFRESH_MS = 60 * 1000;

const grid = document.getElementById("grid");
const empty = document.getElementById("empty");
const more = document.getElementById("more");
const statusLine = document.getElementById("status");
const hashtagSelect = document.getElementById("hashtag");
const minScoreInput = document.getElementById("min-score");
const minScoreValue = document.getElementById("min-score-value");
const modelNotice = document.getElementById("model-notice");
const cardTemplate = document.getElementById("card-template");
const tagTemplate = document.getElementById("tag-template");

const state = {
  hashtag: "",
  minScore: 0,
  nextCursor: null,
  generation: 0, // bumped on every filter change: late answers of older ones are dropped
  source: null,
  model: null, // the model of the newest prediction seen, as /api/model describes it
};

const keyOf = (item) => `${item.tweet_id}/${item.media_key}`;

function setStatus(state, text) {
  statusLine.dataset.state = state;
  statusLine.textContent = text;
}

// Only http(s) URLs become links or image sources; anything else (javascript:, data:) is dropped.
function safeUrl(raw) {
  try {
    const url = new URL(raw, window.location.href);
    return url.protocol === "https:" || url.protocol === "http:" ? url.href : null;
  } catch {
    return null;
  }
}

const modelOf = (item) => ({
  name: item.model_name,
  version: item.model_version,
  weights_meaningful: item.model_weights_meaningful,
  classify_ts_ms: item.classify_ts_ms,
});

// The notice speaks of the model that made the newest prediction: a model swapped in takes
// over with its first prediction, and the cards of the one before keep their own mark.
function showModel(served) {
  if (served && state.model && served.classify_ts_ms < state.model.classify_ts_ms) return;
  state.model = served;
  const named = served ? `${served.name} (version ${served.version})` : "";
  if (!served || served.weights_meaningful === true) {
    modelNotice.hidden = true;
    modelNotice.textContent = "";
    delete modelNotice.dataset.state;
  } else if (served.weights_meaningful === false) {
    modelNotice.dataset.state = "standin";
    modelNotice.textContent =
      `Stand-in model: ${named} has stand-in weights, so its hashtags and scores mean nothing. ` +
      "They show the pipeline working, not what the pictures hold.";
    modelNotice.hidden = false;
  } else {
    modelNotice.dataset.state = "unknown";
    modelNotice.textContent =
      `The model ${named} does not say whether its weights are meaningful: its hashtags may mean nothing.`;
    modelNotice.hidden = false;
  }
}

async function loadModel() {
  try {
    showModel((await getJson("/api/model")).model);
  } catch (error) {
    console.warn("the served model is unknown", error);
  }
}

function formatLatency(ms) {
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

function buildCard(item) {
  const card = cardTemplate.content.firstElementChild.cloneNode(true);
  card.dataset.key = keyOf(item);
  card.dataset.tweetId = item.tweet_id;
  card.dataset.mediaKey = item.media_key;
  card.dataset.classifyTs = String(item.classify_ts_ms);

  const link = card.querySelector(".image-link");
  const postUrl = safeUrl(item.post_url);
  if (postUrl) link.href = postUrl;
  const image = card.querySelector(".image");
  const imageUrl = safeUrl(item.image_url);
  if (imageUrl) image.src = imageUrl;
  image.alt = item.hashtags.map((h) => `#${h.hashtag}`).join(" ");

  const tags = card.querySelector(".tags");
  for (const { hashtag, score } of item.hashtags) {
    const tag = tagTemplate.content.firstElementChild.cloneNode(true);
    tag.dataset.hashtag = hashtag;
    tag.querySelector(".tag-name").textContent = `#${hashtag}`;
    tag.querySelector(".tag-meter").value = score;
    tag.querySelector(".tag-score").textContent = score.toFixed(2);
    tags.append(tag);
  }

  card.querySelector(".text").textContent = item.text;
  card.querySelector(".author").textContent = item.author_username ? `@${item.author_username}` : "";
  card.querySelector(".latency").textContent = `${formatLatency(item.end_to_end_ms)} end to end`;
  if (item.model_weights_meaningful === false) {
    card.classList.add("standin");
    const model = card.querySelector(".model");
    model.textContent = "stand-in model";
    model.title = `${item.model_name} (version ${item.model_version}) has stand-in weights: these hashtags mean nothing`;
  }
  const when = card.querySelector(".when");
  const classified = new Date(item.classify_ts_ms);
  when.dateTime = classified.toISOString();
  when.textContent = classified.toLocaleTimeString();
  return card;
}

// Newest first by classification time; a prediction stored again replaces its card.
function placeCard(item, { fresh }) {
  const card = buildCard(item);
  if (fresh) card.classList.add("fresh");
  for (const old of grid.querySelectorAll(".card")) {
    if (old.dataset.key === card.dataset.key) old.remove();
  }
  const later = [...grid.children].find((c) => Number(c.dataset.classifyTs) < item.classify_ts_ms);
  grid.insertBefore(card, later ?? null);
  while (grid.children.length > MAX_CARDS) grid.lastElementChild.remove();
  empty.hidden = grid.children.length > 0;
}

function queryString(extra = {}) {
  const params = new URLSearchParams();
  if (state.hashtag) params.set("hashtag", state.hashtag);
  if (state.minScore > 0) params.set("min_score", String(state.minScore));
  for (const [name, value] of Object.entries(extra)) params.set(name, String(value));
  return params.toString();
}

async function getJson(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

async function loadPage({ append }) {
  const generation = state.generation;
  const extra = { limit: PAGE_SIZE };
  if (append && state.nextCursor) extra.cursor = state.nextCursor;
  const page = await getJson(`/api/predictions?${queryString(extra)}`);
  if (generation !== state.generation) return false;
  if (!append) grid.replaceChildren();
  for (const item of page.items) placeCard(item, { fresh: false });
  state.nextCursor = page.next_cursor;
  more.hidden = !page.next_cursor;
  empty.hidden = grid.children.length > 0;
  return true;
}

// `count` undefined: a hashtag seen live; keeps the count an existing option shows.
function addHashtagOption(hashtag, count) {
  let option = [...hashtagSelect.options].find((o) => o.value === hashtag);
  if (option && count === undefined) return;
  if (!option) {
    option = document.createElement("option");
    option.value = hashtag;
    const after = [...hashtagSelect.options].slice(1).find((o) => o.value > hashtag);
    hashtagSelect.insertBefore(option, after ?? null);
  }
  option.textContent = count === undefined ? `#${hashtag}` : `#${hashtag} (${count})`;
}

async function loadHashtags() {
  try {
    const counts = await getJson(`/api/hashtags?since_ms=${Date.now() - COUNTS_WINDOW_MS}&limit=500`);
    for (const { hashtag, count } of counts.hashtags) addHashtagOption(hashtag, count);
  } catch (error) {
    console.warn("hashtag counts unavailable", error);
  }
}

// Subscribe first, then load the list: what arrives meanwhile is held and placed after it,
// so nothing falls between the two. Each (re)connection reloads the list for the same reason.
function subscribe() {
  state.source?.close();
  const generation = state.generation;
  const source = new EventSource(`/api/events?${queryString()}`);
  state.source = source;
  let held = [];
  let loaded = false;

  source.addEventListener("open", async () => {
    loaded = false;
    setStatus("loading", "loading…");
    loadModel();
    try {
      if (!(await loadPage({ append: false }))) return;
    } catch (error) {
      setStatus("reconnecting", "API unavailable, retrying…");
      console.warn(error);
      return;
    }
    if (generation !== state.generation) return;
    loaded = true;
    for (const item of held) placeCard(item, { fresh: true });
    held = [];
    setStatus("live", "live");
  });

  source.addEventListener("prediction", (event) => {
    const item = JSON.parse(event.data);
    showModel(modelOf(item));
    for (const { hashtag } of item.hashtags) addHashtagOption(hashtag, undefined);
    if (loaded) placeCard(item, { fresh: true });
    else held.push(item);
  });

  source.addEventListener("error", () => {
    if (source.readyState !== EventSource.CLOSED) setStatus("reconnecting", "reconnecting…");
    else setStatus("reconnecting", "live updates stopped; reload the page");
  });
}

function applyFilters() {
  state.hashtag = hashtagSelect.value;
  state.minScore = Number(minScoreInput.value);
  state.generation += 1;
  state.nextCursor = null;
  subscribe();
}

function showMinScore() {
  minScoreValue.textContent = Number(minScoreInput.value).toFixed(2);
}

document.getElementById("filters").addEventListener("submit", (event) => event.preventDefault());
hashtagSelect.addEventListener("change", applyFilters);
minScoreInput.addEventListener("input", showMinScore);
minScoreInput.addEventListener("change", applyFilters);
more.addEventListener("click", () => {
  loadPage({ append: true }).catch((error) => console.warn(error));
});

showMinScore();
await loadHashtags();
applyFilters();
setInterval(loadHashtags, COUNTS_REFRESH_MS);
// Live events carry only what passes the filters: the newest prediction may be another.
setInterval(loadModel, COUNTS_REFRESH_MS);
