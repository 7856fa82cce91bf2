// Keyboard behaviour of A1111's prompt boxes, for the Gradio page. Loaded once by a page-load event
// (modules/ui/assets.py wraps this file in a function and passes WEBUI_CSS).
//   Ctrl/Cmd+Enter        Generate            Alt+Enter   Skip
//   Ctrl/Cmd+Up / Down    emphasis of the selection (or of the word / (...) block at the cursor):
//                         "cat" -> "(cat:1.1)" -> "(cat:1.2)" ... and back to plain "cat" at weight 1;
//                         inside <lora:name:0.8> the number steps by keyedit_precision_extra.
if (!document.getElementById("webui-css")) {
    const style = document.createElement("style");
    style.id = "webui-css";
    style.textContent = WEBUI_CSS;
    document.head.appendChild(style);
}
window.webuiOpts = Object.assign({
    keyedit_precision_attention: 0.1,
    keyedit_precision_extra: 0.05,
    keyedit_delimiters: ".,\\/!?%^*;:{}=`~() ",
}, window.webuiOpts || {});

window.webuiPromptBox = function (target) {
    if (!target || target.tagName !== "TEXTAREA") return null;
    return target.closest("#txt2img_prompt, #txt2img_neg_prompt, #img2img_prompt, #img2img_neg_prompt");
};

window.webuiFormatWeight = function (weight) {
    const rounded = parseFloat(weight.toPrecision(12));
    return Number.isInteger(rounded) ? rounded.toFixed(1) : String(rounded);
};

// [start, end] of the text inside the OPEN...CLOSE block around `pos`, without a trailing ":weight"; or null.
window.webuiEnclosingBlock = function (text, pos, open, close) {
    const opening = text.lastIndexOf(open, pos - 1);
    if (opening < 0 || text.lastIndexOf(close, pos - 1) > opening) return null;
    const closing = text.indexOf(close, pos);
    if (closing < 0) return null;
    const nextOpen = text.indexOf(open, pos);
    if (nextOpen >= 0 && nextOpen < closing) return null;
    const inner = text.slice(opening + 1, closing);
    const weighted = inner.match(/^([\s\S]*):-?[\d.]+$/);
    return [opening + 1, opening + 1 + (weighted ? weighted[1].length : inner.length)];
};

window.webuiWordAt = function (text, pos, delimiters) {
    const isDelimiter = (ch) => delimiters.includes(ch) || /\s/.test(ch);
    let start = pos, end = pos;
    while (start > 0 && !isDelimiter(text[start - 1])) start--;
    while (end < text.length && !isDelimiter(text[end])) end++;
    return start < end ? [start, end] : null;
};

// The new text and selection after one Ctrl+Up (up=true) or Ctrl+Down on `text` with [start, end) selected.
window.webuiEditAttention = function (text, start, end, up, opts) {
    if (start === end) {
        const block = window.webuiEnclosingBlock(text, start, "<", ">")
            || window.webuiEnclosingBlock(text, start, "(", ")")
            || window.webuiWordAt(text, start, opts.keyedit_delimiters);
        if (!block) return null;
        [start, end] = block;
    }
    while (start < end && /\s/.test(text[start])) start++;
    while (end > start && /\s/.test(text[end - 1])) end--;
    if (start === end) return null;
    const after = text.slice(end);
    const weightMatch = after.match(/^:(-?\d+(?:\.\d+)?|-?\.\d+)([)>])/);
    const opener = text[start - 1];
    if (weightMatch && ((opener === "(" && weightMatch[2] === ")") || weightMatch[2] === ">")) {
        const extra = weightMatch[2] === ">";
        const delta = extra ? opts.keyedit_precision_extra : opts.keyedit_precision_attention;
        const weight = parseFloat(weightMatch[1]) + (up ? delta : -delta);
        const rest = after.slice(weightMatch[0].length);
        if (!extra && parseFloat(weight.toPrecision(12)) === 1) {  // back to weight 1: drop the parentheses
            return {text: text.slice(0, start - 1) + text.slice(start, end) + rest, start: start - 1, end: end - 1};
        }
        const number = extra ? String(parseFloat(weight.toPrecision(12))) : window.webuiFormatWeight(weight);
        return {text: text.slice(0, end) + ":" + number + weightMatch[2] + rest, start: start, end: end};
    }
    const delta = opts.keyedit_precision_attention;
    const number = window.webuiFormatWeight(1 + (up ? delta : -delta));
    return {
        text: text.slice(0, start) + "(" + text.slice(start, end) + ":" + number + ")" + after,
        start: start + 1, end: end + 1,
    };
};

if (!window.webuiKeysInstalled) {
    window.webuiKeysInstalled = true;
    document.addEventListener("keydown", (event) => {
        const box = window.webuiPromptBox(event.target);
        if (!box) return;
        const area = event.target;
        const ctrl = event.ctrlKey || event.metaKey;
        if (event.key === "Enter" && (ctrl || event.altKey)) {
            event.preventDefault();
            const tab = box.id.split("_")[0];  // the prompt's tab: txt2img or img2img
            const button = document.getElementById(tab + (ctrl ? "_generate" : "_skip"));
            if (button) button.click();
            return;
        }
        if (!ctrl || (event.key !== "ArrowUp" && event.key !== "ArrowDown")) return;
        const edit = window.webuiEditAttention(area.value, area.selectionStart, area.selectionEnd,
            event.key === "ArrowUp", window.webuiOpts);
        if (!edit) return;
        event.preventDefault();
        area.value = edit.text;
        area.setSelectionRange(edit.start, edit.end);
        area.dispatchEvent(new Event("input", {bubbles: true}));
    }, true);
}
