/* GAP's page: plays through /api/v1/game with plain fetch. Every text from the server or the player
   is put in with textContent (never innerHTML); the server keeps the clock, this page only shows it. */
(() => {
  "use strict";
  const API = "/api/v1/game";
  const $ = (id) => document.getElementById(id);
  const store = window.sessionStorage;
  const st = { token: store.getItem("gap-token"), session: null, image: null, endsAt: 0, tick: null, busy: false, moving: false };

  function show(...ids) {
    for (const id of ["login", "picker", "play", "summary"]) $(id).hidden = !ids.includes(id);
  }
  function say(text, kind) {
    const s = $("status");
    s.textContent = text || "";
    s.dataset.kind = kind || "";
  }
  function detail(data, status) {
    const d = data && data.detail;
    if (typeof d === "string") return d;
    if (Array.isArray(d) && d.length && d[0].msg) return String(d[0].msg);
    return `the server answered ${status}`;
  }

  async function api(method, path, body) {
    const headers = {};
    if (st.token) headers.Authorization = `Bearer ${st.token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let r;
    try {
      r = await fetch(API + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      return { status: 0, data: { detail: "the server cannot be reached; try again" } };
    }
    let data = null;
    if (r.status !== 204) {
      try { data = await r.json(); } catch (e) { data = null; }
    }
    if (r.status === 401 && path.indexOf("/login/") !== 0) logout("please log in again");
    return { status: r.status, data };
  }

  function randomKey() {
    const b = new Uint8Array(16);
    window.crypto.getRandomValues(b);
    return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }

  // ---- logging in ---------------------------------------------------------------------------

  function loggedIn(data) {
    st.token = data.token;
    store.setItem("gap-token", data.token);
    store.setItem("gap-name", data.name);
    $("who").textContent = data.name;
    loadGames();
  }
  function logout(why) {
    st.token = null;
    store.removeItem("gap-token");
    store.removeItem("gap-session");
    stopTimer();
    show("login");
    say(why || "", "warn");
  }

  /* Telegram's script is optional: loaded only when the server has a bot token, and the page works
     without it (offline, or outside Telegram). Every access is guarded. */
  function telegramInitData() {
    const tg = window.Telegram && window.Telegram.WebApp;
    return tg && typeof tg.initData === "string" && tg.initData ? tg : null;
  }
  function telegramReady() {
    const tag = $("tg-sdk");
    if (!tag || window.Telegram) return Promise.resolve();
    return new Promise((resolve) => {
      tag.addEventListener("load", resolve);
      tag.addEventListener("error", resolve);
      setTimeout(resolve, 3000);
    });
  }

  async function guestLogin(ev) {
    ev.preventDefault();
    const name = $("name").value.trim();
    $("login-btn").disabled = true;
    const r = await api("POST", "/login/guest", name ? { name } : {});
    $("login-btn").disabled = false;
    if (r.status === 200) loggedIn(r.data);
    else say(detail(r.data, r.status), "bad");
  }

  // ---- games and sessions ---------------------------------------------------------------------

  async function loadGames() {
    const r = await api("GET", "/games");
    if (r.status !== 200) return say(detail(r.data, r.status), "bad");
    const list = $("games");
    list.replaceChildren();
    for (const g of r.data.filter((x) => x.state === "active")) {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "game-btn";
      b.dataset.game = g.name;
      b.textContent = g.name;
      const info = document.createElement("span");
      info.className = "muted";
      info.textContent = `${g.n_images} images, ${g.seconds_per_image} s each`;
      b.addEventListener("click", () => startSession(g.name));
      li.append(b, info);
      list.append(li);
    }
    if (!list.children.length) say("No game is open right now.", "warn");
    show("picker");
  }

  async function startSession(game) {
    say("Starting…");
    const r = await api("POST", "/sessions", { game });
    if (r.status !== 201) return say(detail(r.data, r.status), "bad");
    say("");
    render(r.data);
  }

  async function render(s) {
    st.session = s;
    store.setItem("gap-session", s.session_id);
    if (s.state !== "active" || !s.image) return finished(s);
    const im = s.image;
    const fresh = !st.image || st.image.image_id !== im.image_id;
    st.image = im;
    show("play");
    $("progress").textContent = `Image ${im.position + 1} of ${s.n_images}`;
    $("question").maxLength = s.max_question_chars;
    if (fresh) {
      $("answers").replaceChildren();
      for (const q of im.questions) addAnswer(q.question).fill(q);
      loadImage(im.url);
    }
    const open = im.state === "active" && !im.flagged;
    setOpen(open);
    startTimer(im.seconds_left);
    if (open && fresh) $("question").focus();
    if (!open) say(im.flagged ? "Flagged. Press N for the next image." : "This image is done. Press N for the next one.");
  }

  async function loadImage(url) {
    const img = $("image");
    const r = await fetch(url, { headers: { Authorization: `Bearer ${st.token}` } });
    if (!r.ok) return say("the image could not be loaded", "bad");
    const blob = await r.blob();
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(blob);
  }

  function setOpen(open) {
    $("play").dataset.open = open ? "yes" : "no";
    $("question").disabled = !open;
    $("ask-btn").disabled = !open;
    for (const b of $("answers").querySelectorAll("button.wrong, input.corrected")) b.disabled = !open;
  }

  // ---- the clock (the server's; this only shows it) -------------------------------------------

  function stopTimer() {
    if (st.tick) clearInterval(st.tick);
    st.tick = null;
  }
  function startTimer(secondsLeft) {
    stopTimer();
    st.endsAt = performance.now() + secondsLeft * 1000;
    const draw = () => {
      const left = Math.max(0, (st.endsAt - performance.now()) / 1000);
      const t = $("timer");
      t.textContent = `${Math.ceil(left)} s left`;
      t.dataset.low = left <= 10 ? "yes" : "no";
      if (left <= 0) {
        stopTimer();
        if ($("play").dataset.open === "yes") timeUp();
      }
    };
    draw();
    st.tick = setInterval(draw, 250);
  }
  function timeUp() {
    stopTimer();
    setOpen(false);
    $("timer").textContent = "time is up";
    say("Time is up for this image; moving on.", "warn");
    setTimeout(nextImage, 1500);
  }

  // ---- asking, flagging, moving on -------------------------------------------------------------

  let answerN = 0;
  function addAnswer(question) {
    const li = $("answer-tpl").content.firstElementChild.cloneNode(true);
    const id = `corrected-${++answerN}`;
    li.querySelector(".q").textContent = question;
    li.querySelector(".a").textContent = "…";
    li.querySelector("label").htmlFor = id;
    li.querySelector("input").id = id;
    const wrong = li.querySelector("button.wrong");
    wrong.disabled = true;
    wrong.addEventListener("click", () => flag(li));
    $("answers").append(li);
    return {
      li,
      streamed: "",
      grow(text) {
        this.streamed += text;
        li.dataset.chunks = String(Number(li.dataset.chunks || 0) + 1);
        li.querySelector(".a").textContent = this.streamed;
      },
      restart() {
        this.streamed = "";
        li.querySelector(".a").textContent = "…";
      },
      fill(q) {
        li.dataset.question = q.question_id;
        li.querySelector(".a").textContent = q.answer;
        wrong.disabled = $("play").dataset.open !== "yes";
        wrong.setAttribute("aria-label", `Wrong Answer: ${q.answer}`);
      },
      fail(text) {
        li.classList.add("failed");
        li.querySelector(".a").textContent = text;
      },
    };
  }

  async function ask(ev) {
    ev.preventDefault();
    const input = $("question");
    const question = input.value.trim();
    if (!question || st.busy || !st.image) return;
    st.busy = true;
    const im = st.image;
    const row = addAnswer(question);
    input.value = "";
    const r = await askStreaming(`/sessions/${st.session.session_id}/images/${im.image_id}/questions`, {
      question,
      client_key: randomKey(),
    }, row);
    st.busy = false;
    if (r.status === 200) {
      row.fill(r.data);
      say("");
    } else if (r.status === 409) {
      row.fail("not asked: the image is over");
      conflict(r.data);
    } else {
      row.fail(detail(r.data, r.status));
      say(detail(r.data, r.status), "bad");
    }
  }

  // The answer streams in as server-sent events read from fetch (EventSource cannot POST) where the
  // model server streams, else it comes whole; checks that fail answer with plain JSON and a status.
  async function askStreaming(path, body, row) {
    const headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
    if (st.token) headers.Authorization = `Bearer ${st.token}`;
    let r;
    try {
      r = await fetch(API + path, { method: "POST", headers, body: JSON.stringify(body) });
    } catch (e) {
      return { status: 0, data: { detail: "the server cannot be reached; try again" } };
    }
    if (!(r.headers.get("content-type") || "").startsWith("text/event-stream") || !r.body) {
      let data = null;
      try { data = await r.json(); } catch (e) { data = null; }
      if (r.status === 401) logout("please log in again");
      return { status: r.status, data };
    }
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    let result = null;
    const handle = (block) => {
      let name = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      const payload = data ? JSON.parse(data) : {};
      if (name === "delta") row.grow(String(payload.text || ""));
      else if (name === "restart") row.restart();
      else if (name === "answer") result = { status: 200, data: payload };
      else if (name === "error") result = { status: payload.status || 502, data: { detail: payload.detail } };
    };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          handle(buf.slice(0, cut));
          buf = buf.slice(cut + 2);
        }
      }
    } catch (e) {
      result = null;
    }
    return result || { status: 0, data: { detail: "the answer was cut off; ask again" } };
  }

  function conflict(data) {
    if (/time ran out/.test(detail(data, 409))) timeUp();
    else {
      say(detail(data, 409), "warn");
      refresh();
    }
  }

  async function refresh() {
    const r = await api("GET", `/sessions/${st.session.session_id}`);
    if (r.status === 200) render(r.data);
  }

  async function flag(li) {
    if (st.busy || !li.dataset.question || $("play").dataset.open !== "yes") return;
    st.busy = true;
    const corrected = li.querySelector("input.corrected").value.trim();
    const body = { question_id: li.dataset.question };
    if (corrected) body.corrected = corrected;
    const r = await api("POST", `/sessions/${st.session.session_id}/images/${st.image.image_id}/flag`, body);
    st.busy = false;
    if (r.status === 200) {
      li.classList.add("flagged");
      stopTimer();
      setOpen(false);
      $("timer").textContent = "flagged";
      say("Flagged as wrong. Press N for the next image.", "ok");
      $("next-btn").focus();
    } else if (r.status === 409) conflict(r.data);
    else say(detail(r.data, r.status), "bad");
  }

  async function nextImage() {
    if (st.moving || !st.session || st.session.state !== "active" || !st.image) return;
    st.moving = true;
    const r = await api("POST", `/sessions/${st.session.session_id}/next`, { position: st.image.position });
    st.moving = false;
    if (r.status !== 200) return say(detail(r.data, r.status), "bad");
    say("");
    render(r.data);
  }

  // ---- the end: summary and leaderboard --------------------------------------------------------

  async function finished(s) {
    stopTimer();
    st.image = null;
    store.removeItem("gap-session");
    let sum = s.summary;
    if (!sum && s.state === "finished") {
      const r = await api("GET", `/sessions/${s.session_id}/summary`);
      if (r.status === 200) sum = r.data;
    }
    const dl = $("summary-list");
    dl.replaceChildren();
    const rows = sum
      ? [
          ["Images", sum.images],
          ["Questions", sum.questions],
          ["Answers flagged", sum.flagged],
          ["Points this session", sum.points_credited],
          ["Flags awaiting confirmation", sum.flags_awaiting_confirmation],
          ["Your points", sum.total_points],
          ["Earning", sum.reliability.earning ? "yes" : `no: ${sum.reliability.reason}`],
        ]
      : [["Session", s.state]];
    for (const [k, v] of rows) {
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = k;
      dd.textContent = String(v);
      dl.append(dt, dd);
    }
    say("Session over.", "ok");
    show("summary");
    $("again-btn").focus();
  }

  async function leaderboard(period) {
    $("board").hidden = false;
    for (const b of document.querySelectorAll("button.period")) {
      b.setAttribute("aria-pressed", b.dataset.period === period ? "true" : "false");
    }
    const r = await api("GET", `/leaderboard?period=${encodeURIComponent(period)}`);
    const list = $("board-list");
    list.replaceChildren();
    if (r.status !== 200) return say(detail(r.data, r.status), "bad");
    for (const e of r.data.entries) {
      const li = document.createElement("li");
      const name = document.createElement("span");
      const pts = document.createElement("span");
      name.className = "name";
      name.textContent = e.name;
      pts.className = "pts";
      pts.textContent = `${e.points} pts`;
      li.append(name, pts);
      list.append(li);
    }
    if (!r.data.entries.length) {
      const li = document.createElement("li");
      li.className = "muted";
      li.textContent = "No points yet.";
      list.append(li);
    }
  }

  // ---- keyboard --------------------------------------------------------------------------------

  function onKey(ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const t = ev.target;
    const typing = t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable);
    if (typing) {
      if (ev.key === "Escape") t.blur();
      return;
    }
    if ($("play").hidden) return;
    const key = ev.key.toLowerCase();
    if (key === "w") {
      const asked = $("answers").querySelectorAll("li[data-question]");
      if (asked.length) flag(asked[asked.length - 1]);
      ev.preventDefault();
    } else if (key === "n") {
      nextImage();
      ev.preventDefault();
    }
  }

  // ---- start -----------------------------------------------------------------------------------

  async function boot() {
    $("login-form").addEventListener("submit", guestLogin);
    $("ask-form").addEventListener("submit", ask);
    $("next-btn").addEventListener("click", nextImage);
    $("again-btn").addEventListener("click", loadGames);
    $("board-btn").addEventListener("click", () => {
      leaderboard("all");
      $("board").scrollIntoView({ block: "nearest" });
    });
    for (const b of document.querySelectorAll("button.period")) {
      b.addEventListener("click", () => leaderboard(b.dataset.period));
    }
    document.addEventListener("keydown", onKey);
    $("who").textContent = store.getItem("gap-name") || "";

    await telegramReady();
    const tg = telegramInitData();
    if (tg) {
      try { tg.ready(); tg.expand(); } catch (e) { /* an older client */ }
      if (!st.token) {
        const r = await api("POST", "/login/telegram", { init_data: tg.initData });
        if (r.status === 200) return loggedIn(r.data);
        say(`Telegram login failed (${detail(r.data, r.status)}); play as a guest instead.`, "warn");
      }
    }
    if (!st.token) return show("login");
    const sid = store.getItem("gap-session");
    if (sid) {
      const r = await api("GET", `/sessions/${sid}`);
      if (r.status === 200 && r.data.state === "active") return render(r.data);
    }
    if (st.token) loadGames();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();
})();
