// The job page, live: a stream token from the console (POST /ui/stream-token, CSRF header), then an EventSource
// on the events process's /jobs/{id}/events. A new token for each reconnect, resuming after the last event id.
"use strict";
(function () {
  const root = document.getElementById("job");
  if (!root || root.dataset.final) return;
  const $ = (id) => document.getElementById(id);
  const FINAL = new Set(["succeeded", "failed", "canceled", "expired"]);
  let lastId = root.dataset.lastEventId || null;  // the last timeline row rendered: resume after it
  let source = null;
  let retries = 0;

  function say(text) { $("job-live").textContent = text; }

  function setStatus(status) {
    const el = $("job-status");
    el.textContent = status;
    el.className = "status " + status;
  }

  function setProgress(job) {
    if (typeof job.progress === "number") $("job-progress").value = job.progress;
    if ("current_node" in job) $("job-node").textContent = job.current_node || "–";
  }

  function showOutputs(outputs) {
    const list = $("job-outputs");
    list.textContent = "";
    outputs.forEach((output, i) => {
      const url = root.dataset.outputsUrl + i;
      const link = document.createElement("a");
      link.href = url;
      const img = document.createElement("img");
      img.src = url;
      img.width = 160;
      img.alt = "output " + i + " of job " + root.dataset.jobId;
      link.appendChild(img);
      const download = document.createElement("a");
      download.href = url;
      download.download = output.filename || "";
      download.textContent = "Download";
      download.setAttribute("aria-label", "Download output " + i + (output.filename ? " (" + output.filename + ")" : ""));
      const item = document.createElement("li");
      item.append(link, download);
      list.appendChild(item);
    });
    $("job-no-outputs").hidden = outputs.length > 0;
  }

  // The same fields as the server's rendering (comfyq/api/console/job_page.py error_view).
  const SHOWN_DETAILS = ["node_type", "exception_type", "exception_message", "traceback"];
  function showError(error) {
    if (!error) return;
    const details = error.details && typeof error.details === "object" ? error.details : {};
    const node = error.node || details.node_id || "";
    const rest = Object.fromEntries(Object.entries(details).filter(([key]) => !SHOWN_DETAILS.includes(key)));
    $("job-error-type").textContent = error.type || "error";
    $("job-error-message").textContent = error.message || "";
    $("job-error-node").textContent = node && details.node_type ? node + " (" + details.node_type + ")" : node || "–";
    $("job-error-exception").textContent = details.exception_type || "–";
    $("job-error-retryable").textContent = error.retryable ? "yes" : "no";
    $("job-error-traceback").textContent = details.traceback || "";
    $("job-error-traceback-box").hidden = !details.traceback;
    $("job-error-details").textContent = Object.keys(rest).length ? JSON.stringify(rest, null, 2) : "";
    $("job-error-details-box").hidden = !Object.keys(rest).length;
    $("job-error").hidden = false;
  }

  function addTimeline(m) {
    const item = document.createElement("li");
    const when = document.createElement("time");
    const at = m.created_at ? new Date(m.created_at) : new Date();
    when.dateTime = at.toISOString();
    when.textContent = at.toTimeString().slice(0, 8);
    const what = document.createElement("strong");
    what.textContent = m.event;
    item.append(when, " ", what);
    const extra = [m.attempt ? "attempt " + m.attempt : "", m.worker_id || "", m.message || ""].filter(Boolean);
    if (extra.length) item.append(" · " + extra.join(" · "));
    $("job-timeline").appendChild(item);
  }

  function onMessage(event) {
    const m = JSON.parse(event.data);
    if (event.lastEventId) lastId = event.lastEventId;
    if (m.event === "snapshot") {
      setStatus(m.job.status);
      setProgress(m.job);
      showOutputs(m.job.outputs || []);
      showError(m.job.error);
    } else if (m.event === "progress") {
      setProgress(m);
    } else {
      if (m.status) setStatus(m.status);
      addTimeline(m);
      if (m.outputs) showOutputs(m.outputs);
      showError(m.error);
    }
    if (FINAL.has(m.status || (m.job && m.job.status))) {
      if (m.status === "succeeded") $("job-progress").value = 1;
      source.close();
      say("Finished.");
      const cancel = $("job-cancel");
      if (cancel) cancel.hidden = true;
      const retry = $("job-retry");  // rendered hidden while the job ran: failed, canceled and expired jobs retry
      if (retry && (m.status || m.job.status) !== "succeeded") retry.hidden = false;
    }
  }

  async function connect() {
    say("Connecting to live updates…");
    let token;
    try {
      const answer = await fetch(root.dataset.tokenUrl, {method: "POST", credentials: "same-origin",
        headers: {"X-CSRF-Token": root.dataset.csrf}});
      const body = await answer.json();
      if (!answer.ok) { say("Not live: " + (body.error || answer.status) + ". Reload to see changes."); return; }
      token = body.stream_token;
    } catch (err) {
      say("Not live: the console did not answer. Reload to see changes.");
      return;
    }
    let url = root.dataset.eventsUrl + "/jobs/" + root.dataset.jobId + "/events?stream_token=" +
      encodeURIComponent(token);
    if (lastId) url += "&last_event_id=" + encodeURIComponent(lastId);
    source = new EventSource(url);
    const names = ["snapshot", "progress", "queued", "claimed", "retry_scheduled", "rescued", "released",
      "requeued", "cancel_requested", "succeeded", "failed", "canceled", "expired"];
    names.forEach((name) => source.addEventListener(name, onMessage));
    source.onopen = () => { retries = 0; say("Live."); };
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED && $("job-live").textContent === "Finished.") return;
      source.close();  // a stream token is good once: reconnect with a new one
      retries += 1;
      say("Reconnecting…");
      setTimeout(connect, Math.min(30000, 500 * 2 ** Math.min(retries, 6)));
    };
  }

  connect();
})();
