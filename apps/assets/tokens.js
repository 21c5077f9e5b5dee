// One rule for every label that shows a token (ticks, token strips, chips), the same as
// mechscope.apps.html.visible_token: leading / trailing spaces and runs of two or more become
// "␣", newline / tab / CR become "↵ ⇥ ␍", any other space, control or format character
// becomes "<U+00A0>"-style. Single spaces between other characters stay.
window.mechscopeVisible = function (t) {
  "use strict";
  var marks = { "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d" };
  return String(t).replace(/^ +| +$| {2,}/g, function (m) { return "\u2423".repeat(m.length); })
    .replace(/[\p{Cc}\p{Cf}\p{Z}]/gu, function (c) {
      if (c === " ") return c;
      if (marks[c]) return marks[c];
      var h = c.codePointAt(0).toString(16).toUpperCase();
      return "<U+" + ("0000" + h).slice(-Math.max(4, h.length)) + ">";
    });
};
