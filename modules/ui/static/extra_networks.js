// Extra Networks panel (A1111 1.10 behaviour): tabs, cards drawn from JSON in a virtualised grid, search, sort,
// folder dirs/tree, click-to-insert with A1111's insert and removal rules, metadata view and editor.
// Loaded through the panel's gr.HTML `head`; mounted by its `js_on_load` (see modules/ui/extra_networks_panel.py).
(function () {
  "use strict";
  const EN = window.extraNetworks = window.extraNetworks || {panels: {}};

  // ---- A1111's prompt rules (pure functions, also used by the tests) -------------------------------------------
  const RE_NET = /<([^:^>]+:[^:]+):[\d.]+>(.*)/;
  const RE_NET_G = /<([^:^>]+:[^:]+):[\d.]+>/g;
  const RE_NEG = /\(([^:^>]+:[\d.]+)\)/;
  const RE_NEG_G = /\(([^:^>]+:[\d.]+)\)/g;

  // The prompt text after removing `text` as A1111's second click does, or null when nothing was removed.
  EN.removeFromPrompt = function (value, text, isNeg, sep) {
    const m = text.match(isNeg ? RE_NEG : RE_NET);
    if (!m) {  // plain text (an embedding name): every "(sep)?text", the text used as a regex unescaped (A1111)
      let re;
      try { re = new RegExp("((?:" + sep + ")?" + text + ")", "g"); } catch (e) { return null; }
      const out = value.replaceAll(re, "");
      return out !== value ? out : null;
    }
    const after = m[2], wanted = m[1];
    let at = -1, removed = false;
    let out = value.replaceAll(isNeg ? RE_NEG_G : RE_NET_G, (found, net, pos) => {
      const f = found.match(isNeg ? RE_NEG : RE_NET);
      if (f[1] !== wanted) return found;
      removed = true; at = pos; return "";
    });
    if (at >= 0) {  // A1111 checks the last removal position only, in the already shortened text
      if (after && out.substr(at, after.length) === after) out = out.substr(0, at) + out.substr(at + after.length);
      if (out.substr(at - sep.length, sep.length) === sep) out = out.substr(0, at - sep.length) + out.substr(at);
    }
    return removed ? out : null;
  };

  EN.togglePrompt = function (value, text, isNeg, sep) {
    const out = EN.removeFromPrompt(value, text, isNeg, sep);
    return out !== null ? out : value + sep + text;
  };

  // What a card inserts: {prompt, negative, anyBox}. Numbers are JS numbers, so 1.0 prints as "1" (A1111).
  EN.cardText = function (page, c, opts) {
    const mult = opts.extra_networks_default_multiplier;
    if (page === "lora") {
      return {prompt: "<lora:" + c.alias + ":" + (c.weight || mult) + ">" + (c.activation ? " " + c.activation : ""),
              negative: c.negative ? "(" + c.negative + ":1)" : ""};
    }
    if (page === "hypernetworks") return {prompt: "<hypernet:" + c.hypernet + ":" + mult + ">"};
    if (page === "textual_inversion") return {prompt: c.text, anyBox: true};
    return {};
  };

  EN.toggleTag = function (activation, tag) {  // a training tag clicked in the editor
    const words = activation.split(/,\s*/);
    if (words.includes(tag)) return words.filter((w) => w !== tag && w.trim()).join(", ");
    return activation ? activation + ", " + tag : tag;
  };

  EN.takeCheckpoint = function () { const t = EN.pendingCheckpoint; EN.pendingCheckpoint = null; return t; };

  const esc = (s) => String(s).replace(/[&<>"']/g, (ch) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[ch]);
  const SORTS = [["path", "Path"], ["name", "Name"], ["date_created", "Date Created"], ["date_modified", "Date Modified"], ["default", "Default Sort"]];
  const sortKey = {
    path: (c) => c.rel.toLowerCase(), name: (c) => (c.label || c.name).toLowerCase(),
    date_created: (c) => c.created, date_modified: (c) => c.modified, default: (c) => c.index,
  };

  class Panel {
    constructor(element, server) {
      this.el = element.querySelector(".en-root");
      this.cfg = JSON.parse(this.el.dataset.config);
      this.server = server;
      this.opts = this.cfg.opts;
      this.data = {};
      this.order = {};
      this.view = [];
      this.active = null;
      const field = String(this.opts.extra_networks_card_order_field || "Path").toLowerCase().replace(" ", "_");
      this.sort = sortKey[field] ? field : "path";
      this.asc = this.opts.extra_networks_card_order !== "Descending";
      this.treeShown = this.opts.extra_networks_tree_view_default_enabled !== false;
      this.treeStyle = this.opts.extra_networks_tree_view_style === "Tree" ? "Tree" : "Dirs";
      this.expanded = new Set();
      this.negFocused = false;
      this.build();
      document.addEventListener("focusin", (e) => {
        if (e.target.closest("#" + this.cfg.negative)) this.negFocused = true;
        else if (e.target.closest("#" + this.cfg.prompt)) this.negFocused = false;
      });
    }

    $(sel) { return this.el.querySelector(sel); }

    build() {
      const tabs = this.cfg.pages.map((p) => `<button type="button" class="en-tab" data-page="${p.id}">${esc(p.title)}</button>`).join("");
      const sorts = SORTS.map(([k, v]) => `<option value="${k}"${k === this.sort ? " selected" : ""}>${v}</option>`).join("");
      this.el.innerHTML = `<div class="en-tabs" role="tablist">${tabs}</div>
        <div class="en-pane" hidden>
          <div class="en-controls">
            <input class="en-search" type="search" placeholder="Search" aria-label="Search extra networks">
            <select class="en-sort" aria-label="Sort by">${sorts}</select>
            <button type="button" class="en-sort-dir" title="Sort direction"></button>
            <button type="button" class="en-tree-toggle" title="Show or hide folders">🗂</button>
            <select class="en-tree-style" aria-label="Folder view"><option>Dirs</option><option>Tree</option></select>
            <button type="button" class="en-refresh" title="Refresh page">🔄</button>
            <span class="en-count"></span>
          </div>
          <div class="en-dirs"></div>
          <div class="en-body"><div class="en-tree"></div>
            <div class="en-cards"><div class="en-spacer"><div class="en-window"></div></div></div></div>
        </div>
        <div class="en-modal" hidden><div class="en-dialog"></div></div>`;
      this.cards = this.$(".en-cards");
      this.win = this.$(".en-window");
      this.$(".en-tree-style").value = this.treeStyle;
      this.$(".en-tabs").addEventListener("click", (e) => { const b = e.target.closest(".en-tab"); if (b) this.open(b.dataset.page); });
      this.$(".en-search").addEventListener("input", (e) => this.setSearch(e.target.value, false));
      this.$(".en-sort").addEventListener("change", (e) => { this.sort = e.target.value; this.apply(); });
      this.$(".en-sort-dir").addEventListener("click", () => { this.asc = !this.asc; this.apply(); });
      this.$(".en-tree-toggle").addEventListener("click", () => { this.treeShown = !this.treeShown; this.drawFolders(); });
      this.$(".en-tree-style").addEventListener("change", (e) => { this.treeStyle = e.target.value; this.drawFolders(); });
      this.$(".en-refresh").addEventListener("click", () => this.refresh(false));
      this.$(".en-dirs").addEventListener("click", (e) => { const b = e.target.closest("button"); if (b) this.setSearch(b.dataset.path ? b.dataset.path + "/" : "", true); });
      this.$(".en-tree").addEventListener("click", (e) => this.treeClick(e));
      this.win.addEventListener("click", (e) => this.cardClick(e));
      this.cards.addEventListener("scroll", () => this.schedule());
      new ResizeObserver(() => this.layout()).observe(this.cards);
      this.$(".en-modal").addEventListener("click", (e) => { if (e.target.classList.contains("en-modal")) this.closeModal(); });
      document.addEventListener("keydown", (e) => { if (e.key === "Escape") this.closeModal(); });
    }

    url(path) { return new URL(path, document.baseURI).toString(); }

    async fetchPage(page, refresh, full) {
      const q = "?page=" + encodeURIComponent(page) + (full ? "&full=true" : "");
      const r = await fetch(this.url("sd_extra_networks/" + (refresh ? "refresh" : "cards") + q), {method: refresh ? "POST" : "GET"});
      if (!r.ok) throw new Error(await r.text());
      return r.json();
    }

    async open(page) {
      const pane = this.$(".en-pane");
      if (this.active === page && !pane.hidden) { pane.hidden = true; this.markTabs(null); return; }
      this.active = page;
      this.markTabs(page);
      pane.hidden = false;
      if (this.data[page]) {  // cached cards; the settings may have changed since (default multiplier, ...)
        fetch(this.url("sd_extra_networks/options")).then((r) => r.ok ? r.json() : null).then((o) => { if (o) this.opts = o; });
      } else {
        this.win.innerHTML = "";
        this.$(".en-count").textContent = "Loading…";
        this.setData(await this.fetchPage(page, false));
      }
      if (this.active === page) { this.drawFolders(); this.apply(); }
    }

    markTabs(page) {
      this.el.querySelectorAll(".en-tab").forEach((b) => b.classList.toggle("selected", b.dataset.page === page));
    }

    setData(body) {
      for (const c of body.cards) if (!c.search) c.search = c.rel.toLowerCase();
      if (body.opts) this.opts = body.opts;
      this.data[body.page] = body;
      delete this.order[body.page];
      this.el.dataset.stats = JSON.stringify(body.stats || {});
    }

    async refresh(full) {
      const page = this.active;
      const body = await this.fetchPage(page, true, full);
      this.data = {};
      this.setData(body);
      this.drawFolders();
      this.apply();
      return body.stats;
    }

    setSearch(text, fromFolder) {
      this.search = text;
      if (fromFolder) this.$(".en-search").value = text;
      this.apply();
      this.drawFolders();
    }

    // Filter and sort the active page into this.view (indexes into its cards), then draw.
    apply() {
      const body = this.data[this.active];
      if (!body) return;
      const cards = body.cards, okey = this.sort;
      if (!this.order[this.active] || this.order[this.active].key !== okey) {
        const f = sortKey[okey];
        const idx = cards.map((c, i) => i);
        const keys = cards.map(f);
        idx.sort((a, b) => {
          const x = keys[a], y = keys[b];
          return x < y ? -1 : x > y ? 1 : 0;
        });
        this.order[this.active] = {key: okey, idx};
      }
      let idx = this.order[this.active].idx;
      if (!this.asc) idx = idx.slice().reverse();
      const q = (this.search || "").toLowerCase();
      const hidden = this.opts.extra_networks_hidden_models;
      const showHidden = hidden === "Always" || (hidden !== "Never" && q.length >= 4);
      const page = this.active;
      this.view = idx.filter((i) => {
        const c = cards[i];
        if (c.hidden && !showHidden) return false;
        if (page === "lora" && !this.versionShown(c)) return false;
        return !q || c.search.includes(q);
      });
      this.$(".en-sort-dir").textContent = this.asc ? "⬆" : "⬇";
      this.$(".en-sort-dir").dataset.dir = this.asc ? "asc" : "desc";
      const count = this.$(".en-count");
      count.textContent = this.view.length + " / " + cards.length;
      count.dataset.shown = this.view.length; count.dataset.total = cards.length;
      this.range = null;
      this.cards.scrollTop = 0;
      this.layout();
    }

    versionShown(c) {
      if (this.opts.lora_show_all) return true;
      if (c.sd_version === "Unknown") return !(this.opts.lora_hide_unknown_for_versions || []).includes("SD1");
      return !c.sd_version || c.sd_version === "SD1";
    }

    // ---- virtualised grid ------------------------------------------------------------------------------------
    metrics() {
      const s = getComputedStyle(this.el);
      const n = (v, d) => parseFloat(s.getPropertyValue(v)) || d;
      return {w: n("--en-card-w", 160), h: n("--en-card-h", 220), gap: n("--en-gap", 8)};
    }

    layout() {
      if (!this.data[this.active]) return;
      const m = this.metrics();
      this.cols = Math.max(1, Math.floor((this.cards.clientWidth - m.gap + m.gap) / (m.w + m.gap)));
      this.rowH = m.h + m.gap;
      const rows = Math.ceil(this.view.length / this.cols);
      this.$(".en-spacer").style.height = rows * this.rowH + "px";
      this.win.style.gridTemplateColumns = `repeat(${this.cols}, ${m.w}px)`;
      this.range = null;
      this.draw();
    }

    schedule() {
      if (this.pending) return;
      this.pending = requestAnimationFrame(() => { this.pending = 0; this.draw(); });
    }

    draw() {
      const top = this.cards.scrollTop, height = this.cards.clientHeight || 600;
      const first = Math.max(0, Math.floor(top / this.rowH) - 1);
      const last = Math.ceil((top + height) / this.rowH) + 1;
      const key = first + ":" + last + ":" + this.cols;
      if (this.range === key) return;
      this.range = key;
      const cards = this.data[this.active].cards, page = this.active;
      const meta = page === "lora";
      let html = "";
      for (let v = first * this.cols; v < Math.min(this.view.length, last * this.cols); v++) {
        const i = this.view[v], c = cards[i];
        const img = c.preview ? `<img class="preview" loading="lazy" decoding="async" alt="" src="${esc(this.url(c.preview))}">` : `<div class="no-preview"></div>`;
        html += `<div class="card" data-i="${i}" data-name="${esc(c.name)}" title="${esc(c.rel)}">${img}` +
          `<div class="button-row">${meta ? '<button type="button" class="en-meta" title="Show internal metadata">ⓘ</button>' : ""}` +
          `<button type="button" class="en-edit" title="Edit metadata">🛠</button></div>` +
          `<div class="actions"><span class="name">${esc(c.label || c.name)}</span>` +
          (c.desc ? `<span class="description">${c.desc}</span>` : "") + `</div></div>`;
      }
      this.win.style.transform = `translateY(${first * this.rowH}px)`;
      this.win.innerHTML = html;
      this.el.dispatchEvent(new CustomEvent("extra-networks:rendered", {detail: {page, shown: this.view.length}}));
    }

    // ---- folders ---------------------------------------------------------------------------------------------
    drawFolders() {
      const body = this.data[this.active];
      const dirsEl = this.$(".en-dirs"), treeEl = this.$(".en-tree");
      dirsEl.hidden = !(this.treeShown && this.treeStyle === "Dirs");
      treeEl.hidden = !(this.treeShown && this.treeStyle === "Tree");
      if (!body) return;
      const search = this.search || "";
      if (!dirsEl.hidden) {
        dirsEl.innerHTML = `<button type="button" data-path=""${search ? "" : ' class="selected"'}>all</button>` +
          body.dirs.map((d) => `<button type="button" data-path="${esc(d)}"${search === d + "/" ? ' class="selected"' : ""}>${esc(d)}</button>`).join("");
      }
      if (!treeEl.hidden) {
        let html = "";
        for (const d of body.dirs) {
          const parts = d.split("/");
          const parent = parts.slice(0, -1).join("/");
          if (parent && !this.isOpen(parent)) continue;
          const hasKids = body.dirs.some((x) => x.startsWith(d + "/"));
          const caret = hasKids ? (this.expanded.has(d) ? "▾" : "▸") : "";
          html += `<div class="en-tree-node${search === d + "/" ? " selected" : ""}" data-path="${esc(d)}" style="padding-left:${(parts.length - 1) * 1.1}em">` +
            `<span class="en-caret">${caret}</span><span class="en-tree-label">${esc(parts[parts.length - 1])}</span></div>`;
        }
        treeEl.innerHTML = html;
      }
    }

    isOpen(path) {
      const parts = path.split("/");
      for (let n = 1; n <= parts.length; n++) if (!this.expanded.has(parts.slice(0, n).join("/"))) return false;
      return true;
    }

    treeClick(e) {
      const node = e.target.closest(".en-tree-node");
      if (!node) return;
      const path = node.dataset.path;
      if (e.target.classList.contains("en-caret")) {
        if (this.expanded.has(path)) this.expanded.delete(path); else this.expanded.add(path);
        this.drawFolders();
        return;
      }
      this.expanded.add(path);
      this.setSearch(this.search === path + "/" ? "" : path + "/", true);
    }

    // ---- clicks ----------------------------------------------------------------------------------------------
    cardClick(e) {
      const el = e.target.closest(".card");
      if (!el) return;
      const card = this.data[this.active].cards[+el.dataset.i];
      if (e.target.closest(".en-meta")) { this.showMetadata(card); return; }
      if (e.target.closest(".en-edit")) { this.openEditor(card); return; }
      if (this.active === "checkpoints") {
        EN.pendingCheckpoint = card.checkpoint;
        const button = document.getElementById(this.cfg.checkpointButton);
        if (button) button.click();
        return;
      }
      const t = EN.cardText(this.active, card, this.opts);
      const prompt = this.box(this.cfg.prompt), negative = this.box(this.cfg.negative);
      if (t.negative) { this.update(prompt, t.prompt, false); this.update(negative, t.negative, true); }
      else if (t.anyBox) this.update(this.negFocused ? negative : prompt, t.prompt, false);
      else if (t.prompt) this.update(prompt, t.prompt, false);
    }

    box(id) { return document.querySelector("#" + id + " textarea"); }

    update(area, text, isNeg) {
      if (!area) return;
      area.value = EN.togglePrompt(area.value, text, isNeg, String(this.opts.extra_networks_add_text_separator));
      area.dispatchEvent(new Event("input", {bubbles: true}));
    }

    // ---- metadata view and editor ----------------------------------------------------------------------------
    modal(html) {
      this.$(".en-dialog").innerHTML = html;
      this.$(".en-modal").hidden = false;
      return this.$(".en-dialog");
    }

    closeModal() { const m = this.$(".en-modal"); if (m) m.hidden = true; }

    async showMetadata(card) {
      const r = await fetch(this.url(`sd_extra_networks/metadata?page=${this.active}&item=${encodeURIComponent(card.name)}`));
      const meta = r.ok ? JSON.parse((await r.json()).metadata) : {};
      const rows = Object.entries(meta).map(([k, v]) => `<tr><th>${esc(k)}</th><td>${typeof v === "object" ? `<pre>${esc(JSON.stringify(v, null, 2))}</pre>` : esc(v)}</td></tr>`);
      this.modal(`<h2>${esc(card.label || card.name)}</h2><table class="en-metadata">${rows.join("") || "<tr><td>No metadata</td></tr>"}</table>` +
        `<div class="en-editor-buttons"><button type="button" class="en-cancel">Close</button></div>`)
        .querySelector(".en-cancel").addEventListener("click", () => this.closeModal());
    }

    async openEditor(card) {
      const page = this.active;
      const info = await this.server.editor_info({page, name: card.name});
      if (info.error) { this.modal(`<p class="en-error">${esc(info.error)}</p>`); return; }
      const v = info.values, f = new Set(info.fields);
      const field = (key, label, input) => f.has(key) ? `<label class="en-field">${label}${input}</label>` : "";
      const versions = this.cfg.versions.map((x) => `<option${x === v["sd version"] ? " selected" : ""}>${x}</option>`).join("");
      const tags = info.tags.map(([t, n]) => `<button type="button" class="en-tag" data-tag="${esc(t)}">${esc(t)} <span>${n}</span></button>`).join("");
      const dlg = this.modal(`<h2>${esc(info.label)}</h2>
        <div class="en-editor-top"><table class="en-info">${info.rows.map(([k, x]) => `<tr><th>${esc(k)}</th><td>${x}</td></tr>`).join("")}</table>
          <img class="en-editor-preview"${info.preview ? ` src="${esc(this.url(info.preview))}"` : " hidden"} alt=""></div>
        ${tags ? `<div class="en-tags" title="Training dataset tags: click to add to or remove from the activation text">${tags}</div>` : ""}
        ${field("description", "Description", `<textarea data-key="description" rows="2">${esc(v.description || "")}</textarea>`)}
        ${field("sd version", "SD version", `<select data-key="sd version">${versions}</select>`)}
        ${field("activation text", "Activation text", `<input type="text" data-key="activation text" value="${esc(v["activation text"] || "")}">`)}
        ${field("preferred weight", "Preferred weight", `<span class="en-weight"><input type="range" min="0" max="2" step="0.01" data-key="preferred weight" value="${+v["preferred weight"] || 0}"><output>${+v["preferred weight"] || 0}</output></span>`)}
        ${field("negative text", "Negative prompt", `<input type="text" data-key="negative text" value="${esc(v["negative text"] || "")}">`)}
        ${field("notes", "Notes", `<textarea data-key="notes" rows="2">${esc(v.notes || "")}</textarea>`)}
        <div class="en-editor-buttons"><button type="button" class="en-replace-preview">Replace preview</button>
          <button type="button" class="en-save">Save</button><button type="button" class="en-cancel">Cancel</button></div>
        <div class="en-status"></div>`);
      const status = (text) => { dlg.querySelector(".en-status").textContent = text; };
      const act = dlg.querySelector('[data-key="activation text"]');
      dlg.querySelectorAll(".en-tag").forEach((b) => b.addEventListener("click", () => { act.value = EN.toggleTag(act.value, b.dataset.tag); }));
      const range = dlg.querySelector('[data-key="preferred weight"]');
      if (range) range.addEventListener("input", () => { range.nextElementSibling.textContent = range.value; });
      dlg.querySelector(".en-cancel").addEventListener("click", () => this.closeModal());
      dlg.querySelector(".en-save").addEventListener("click", async () => {
        const values = {};
        dlg.querySelectorAll("[data-key]").forEach((x) => { values[x.dataset.key] = x.type === "range" ? +x.value : x.value; });
        const reply = await this.server.save_user_metadata({page, name: card.name, values});
        if (reply.error) { status(reply.error); return; }
        this.replaceCard(page, reply.card);
        this.closeModal();
      });
      dlg.querySelector(".en-replace-preview").addEventListener("click", async () => {
        const image = await this.galleryImage();
        if (!image) { status("Generate an image first: the selected (or first) image of the gallery becomes the preview."); return; }
        const infoBox = document.querySelector("#" + this.cfg.info + " textarea");
        const reply = await this.server.replace_preview({page, name: card.name, image, infotext: infoBox ? infoBox.value : ""});
        if (reply.error) { status(reply.error); return; }
        this.replaceCard(page, reply.card);
        const img = dlg.querySelector(".en-editor-preview");
        img.src = this.url(reply.card.preview); img.hidden = false;
        status("Preview replaced.");
      });
    }

    async galleryImage() {
      const g = document.getElementById(this.cfg.gallery);
      const img = g && (g.querySelector(".preview img, .thumbnail-item.selected img, button.selected img") || g.querySelector("img"));
      if (!img || !img.src) return null;
      const blob = await (await fetch(img.src)).blob();
      return await new Promise((resolve) => { const r = new FileReader(); r.onload = () => resolve(r.result); r.readAsDataURL(blob); });
    }

    replaceCard(page, card) {
      const body = this.data[page];
      if (!body) return;
      const i = body.cards.findIndex((c) => c.name === card.name);
      if (i < 0) return;
      if (!card.search) card.search = card.rel.toLowerCase();
      body.cards[i] = card;
      delete this.order[page];
      if (page === this.active) { const top = this.cards.scrollTop; this.apply(); this.cards.scrollTop = top; this.draw(); }
    }
  }

  EN.mount = function (element, server) {
    const root = element.querySelector(".en-root");
    if (!root || root.dataset.mounted) return null;
    root.dataset.mounted = "1";
    const panel = new Panel(element, server);
    EN.panels[panel.cfg.tab] = panel;
    return panel;
  };
})();
