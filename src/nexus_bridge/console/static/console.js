// The live timeline of a task page: new updates arrive as server-sent events (the bridge sends
// each once it is committed; nothing here polls). Everything is built with textContent.
"use strict";

(function () {
  const timeline = document.getElementById("timeline");
  if (!timeline || !timeline.dataset.events) {
    return;
  }
  const live = document.getElementById("live-state");
  const badge = document.getElementById("task-status");
  const reason = document.getElementById("task-reason");
  const replyForm = document.getElementById("reply-form");
  const cancelForm = document.getElementById("cancel-form");
  const labels = { status: "status", agent: "agent", client: "you" };

  function say(text) {
    if (live) {
      live.textContent = text;
    }
  }

  function readable(iso) {
    const at = new Date(iso);
    return at.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function append(update) {
    if (document.getElementById("u-" + update.seq)) {
      return; // already shown (a reconnect resends nothing, but be sure)
    }
    const item = document.createElement("li");
    item.className = "update kind-" + update.kind;
    item.id = "u-" + update.seq;
    item.dataset.seq = String(update.seq);
    const meta = document.createElement("p");
    meta.className = "meta";
    const kind = document.createElement("span");
    kind.className = "kind";
    kind.textContent = labels[update.kind] || update.kind;
    const time = document.createElement("time");
    time.dateTime = update.created_at;
    time.textContent = readable(update.created_at);
    meta.append(kind, " · ", time);
    const content = document.createElement("div");
    content.className = "content";
    content.textContent = update.content;
    item.append(meta, content);
    timeline.append(item);
  }

  function showTask(task) {
    if (badge) {
      badge.textContent = task.status.replace(/_/g, " ");
      badge.className = "status status-" + task.status;
    }
    if (reason) {
      reason.textContent = task.status_reason ? "(" + task.status_reason + ")" : "";
    }
    if (replyForm) {
      replyForm.hidden = task.status !== "input_required";
    }
    if (cancelForm) {
      cancelForm.hidden = task.ended;
    }
    ["acknowledged_at", "started_at", "ended_at", "updated_at"].forEach(function (field) {
      const shown = document.getElementById("task-" + field.replace(/_/g, "-"));
      if (!shown || !task[field]) {
        return;
      }
      const time = document.createElement("time");
      time.dateTime = task[field];
      time.textContent = readable(task[field]);
      shown.replaceChildren(time);
    });
  }

  const source = new EventSource(timeline.dataset.events);
  source.addEventListener("open", function () {
    say("Live: new updates appear here as they happen.");
  });
  source.addEventListener("update", function (event) {
    append(JSON.parse(event.data));
  });
  source.addEventListener("task", function (event) {
    showTask(JSON.parse(event.data));
  });
  source.addEventListener("signed-out", function () {
    source.close();
    say("Signed out: reload the page to sign in again.");
  });
  source.addEventListener("error", function () {
    say(source.readyState === EventSource.CLOSED
      ? "Not live: reload the page to see new updates."
      : "Reconnecting to the live updates…");
  });
})();
