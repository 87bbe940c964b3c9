// YAML for display and editing.  `dump` writes block-style YAML from the JSON the API returns
// (strings that could be read back as something else are double-quoted, JSON style, which is
// valid YAML).  The console never parses YAML itself: edited text is sent to the server as
// application/yaml, which parses and validates it.  `locate` maps a JSON path from the server's
// 422 `details.violations` (`$.rules[0].route.cluster`) to a line of the text being edited.

const PLAIN = /^[A-Za-z0-9_/][A-Za-z0-9_./@+-]*( [A-Za-z0-9_./@+()-]+)*$/;
const AMBIGUOUS = /^(true|false|yes|no|on|off|y|n|null|~|[-+]?(\.inf|\.nan)|[-+]?[0-9_.:eE+]+|0x[0-9a-fA-F]+|0o[0-7]+)$/i;

export function scalar(value) {
  if (value === null || value === undefined) return "null";
  if (typeof value === "boolean" || typeof value === "number") return String(value);
  const text = String(value);
  if (PLAIN.test(text) && !AMBIGUOUS.test(text)) return text;
  return JSON.stringify(text);
}

const isCollection = (v) => v !== null && typeof v === "object";
const isEmpty = (v) => (Array.isArray(v) ? v.length === 0 : Object.keys(v).length === 0);

function inline(value) {
  if (!isCollection(value)) return scalar(value);
  return Array.isArray(value) ? "[]" : "{}";
}

function lines(value, indent) {
  const pad = " ".repeat(indent);
  const out = [];
  if (Array.isArray(value)) {
    for (const item of value) {
      if (!isCollection(item) || isEmpty(item)) {
        out.push(`${pad}- ${inline(item)}`);
        continue;
      }
      const inner = lines(item, indent + 2);
      inner[0] = `${pad}- ${inner[0].slice(indent + 2)}`;
      out.push(...inner);
    }
    return out;
  }
  for (const [key, item] of Object.entries(value)) {
    if (!isCollection(item) || isEmpty(item)) out.push(`${pad}${scalar(key)}: ${inline(item)}`);
    else {
      out.push(`${pad}${scalar(key)}:`);
      out.push(...lines(item, indent + 2));
    }
  }
  return out;
}

export function dump(value) {
  if (!isCollection(value) || isEmpty(value)) return `${inline(value)}\n`;
  return `${lines(value, 0).join("\n")}\n`;
}

/** `$.rules[0].route.cluster` -> ["rules", 0, "route", "cluster"]. */
export function parsePath(path) {
  const parts = [];
  const re = /\.([^.[]+)|\[(\d+)\]/g;
  let m;
  while ((m = re.exec(path || ""))) parts.push(m[2] !== undefined ? Number(m[2]) : m[1]);
  return parts;
}

function unquote(key) {
  if (key.startsWith('"')) {
    try {
      return JSON.parse(key);
    } catch {
      return key.slice(1, -1);
    }
  }
  if (key.startsWith("'")) return key.slice(1, -1).replace(/''/g, "'");
  return key;
}

const KEY = /^("(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|[^'"#\s-][^:#]*?|-[^\s:#][^:#]*?)\s*:(\s|$)/;

/** The JSON path of each line of block-style YAML text (null for blank/comment lines). */
export function linePaths(text) {
  const src = text.split("\n");
  const out = new Array(src.length).fill(null);
  const stack = [{ indent: -1, path: [], next: 0 }];
  for (let n = 0; n < src.length; n++) {
    const raw = src[n];
    let rest = raw.trimStart();
    let indent = raw.length - rest.length;
    if (!rest || rest.startsWith("#")) continue;
    let top = stack[stack.length - 1];
    if (top.block && indent > top.indent) {
      out[n] = top.path;
      continue;
    }
    while (stack.length > 1) {
      top = stack[stack.length - 1];
      if (top.indent < indent) break;
      if (top.indent === indent && top.isKey && (!top.children || top.sameIndentSeq) && /^-(\s|$)/.test(rest)) break;
      stack.pop();
    }
    let parent = stack[stack.length - 1];
    while (/^-(\s|$)/.test(rest)) {
      if (parent.isKey && parent.indent === indent) parent.sameIndentSeq = true;
      parent.children = true;
      const item = { indent, path: [...parent.path, parent.next++], next: 0 };
      stack.push(item);
      out[n] = item.path;
      const after = rest.slice(1);
      const gap = after.length - after.trimStart().length;
      indent += 1 + gap;
      rest = after.trimStart();
      parent = item;
    }
    if (!rest || rest.startsWith("#")) continue;
    const m = KEY.exec(rest);
    if (!m) {
      if (out[n] === null) out[n] = parent.path;
      continue;
    }
    parent.children = true;
    const path = [...parent.path, unquote(m[1])];
    out[n] = path;
    const value = rest.slice(m[0].length).trim();
    if (!value || value.startsWith("#")) stack.push({ indent, path, next: 0, isKey: true });
    else if (/^[|>][-+0-9]*(\s+#.*)?$/.test(value)) stack.push({ indent, path, next: 0, block: true });
  }
  return out;
}

/** {line (0-based), exact} of the line holding `jsonPath` (or its deepest present ancestor). */
export function locate(text, jsonPath) {
  const want = parsePath(jsonPath);
  const paths = linePaths(text);
  let best = { line: 0, depth: -1 };
  paths.forEach((path, line) => {
    if (!path || path.length > want.length || path.length <= best.depth) return;
    if (path.every((part, i) => part === want[i])) best = { line, depth: path.length };
  });
  return { line: best.line, exact: best.depth === want.length };
}
