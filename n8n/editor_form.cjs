#!/usr/bin/env node
// What n8n's editor does to a workflow when it opens it, applied to workflow files, so the files in
// n8n-workflows/ are already in that form and opening a node in the editor changes nothing (no draft is
// autosaved, nothing shows "Publish"):
//   * every node's parameters go through n8n-workflow's getNodeParameters(..., returnDefaults=true), as the
//     canvas does on load (every default a node's current version shows is filled in);
//   * Filter and If conditions take the typeValidation their "looseTypeValidation" option implies, as the
//     conditions component writes it back when it is shown;
//   * settings get binaryMode "separate", the editor's default for a workflow without one.
// Runs on the Node of the pinned n8n (n8n/node_modules/.bin/node) with that n8n's own packages.
//
//   node n8n/editor_form.cjs FILE...            rewrite the files in place
//   node n8n/editor_form.cjs --check FILE...    change nothing; exit 1 and name each file that would change
'use strict';

const fs = require('fs');
const path = require('path');

const NODE_MODULES = path.join(__dirname, 'node_modules');
const { NodeHelpers } = require(path.join(NODE_MODULES, 'n8n-workflow'));
const NODE_TYPES = require(path.join(NODE_MODULES, 'n8n-nodes-base', 'dist', 'types', 'nodes.json'));
const PREFIX = 'n8n-nodes-base.';
const CONDITION_NODES = new Set(['n8n-nodes-base.filter', 'n8n-nodes-base.if']);

function description(type, version) {
  if (!type.startsWith(PREFIX)) return null;
  const name = type.slice(PREFIX.length);
  return NODE_TYPES.find((entry) => entry.name === name
    && (Array.isArray(entry.version) ? entry.version : [entry.version]).includes(version)) || null;
}

function conditionsTypeValidation(node) {
  const conditions = node.parameters.conditions;
  if (!CONDITION_NODES.has(node.type) || !conditions || typeof conditions !== 'object') return;
  const loose = node.parameters.looseTypeValidation === true
    || (node.parameters.options && node.parameters.options.looseTypeValidation === true);
  conditions.options = { ...(conditions.options || {}), typeValidation: loose ? 'loose' : 'strict' };
}

function editorForm(workflow) {
  const out = JSON.parse(JSON.stringify(workflow));
  for (const node of out.nodes || []) {
    const type = description(node.type, node.typeVersion);
    if (type === null) continue;
    node.parameters = NodeHelpers.getNodeParameters(type.properties, node.parameters || {}, true, false, node,
      type) || {};
    conditionsTypeValidation(node);
  }
  out.settings = { binaryMode: 'separate', ...(out.settings || {}) };
  return out;
}

function canonical(value) {
  if (Array.isArray(value)) return value.map(canonical);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.keys(value).sort().map((key) => [key, canonical(value[key])]));
  }
  return value;
}

function main(argv) {
  const check = argv[0] === '--check';
  const files = check ? argv.slice(1) : argv;
  if (files.length === 0) {
    process.stderr.write('usage: editor_form.cjs [--check] FILE...\n');
    return 2;
  }
  let dirty = 0;
  for (const file of files) {
    const text = fs.readFileSync(file, 'utf8');
    const data = JSON.parse(text);
    const formed = Array.isArray(data) ? data.map(editorForm) : editorForm(data);
    if (JSON.stringify(canonical(formed)) === JSON.stringify(canonical(data))) continue;
    dirty += 1;
    if (check) {
      process.stdout.write(`not in the editor's form: ${file}\n`);
    } else {
      fs.writeFileSync(file, `${JSON.stringify(formed, null, 2)}\n`);
    }
  }
  return check && dirty ? 1 : 0;
}

if (require.main === module) process.exit(main(process.argv.slice(2)));
module.exports = { editorForm };
