#!/usr/bin/env node
// What n8n's editor does to a workflow when it opens it, applied to workflow files, so the files in
// n8n-workflows/ are already in that form and opening a node in the editor changes nothing (no draft is
// autosaved, nothing shows "Publish"):
//   * every node's parameters go through n8n-workflow's getNodeParameters(..., returnDefaults=true), as the
//     canvas does on load (every default a node's current version shows is filled in);
//   * Filter and If conditions take the typeValidation their "looseTypeValidation" option implies, as the
//     conditions component writes it back when it is shown;
//   * a Resource Mapper parameter (Execute Workflow's "Workflow Inputs") takes the full value its component
//     writes back when the node's panel opens (schema, matching columns, type conversion options, values);
//   * every position goes to the canvas's 16 px grid, as the canvas puts it when it loads a workflow (the next
//     save writes it);
//   * settings get binaryMode "separate", the editor's default for a workflow without one.
// What the editor loads from the server when a panel opens (a sub-workflow's declared inputs) is not known here:
// tests/n8n/test_editor_round_trip.py opens every node in the real editor and would see it.
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

// The ResourceMapper component (n8n-editor-ui) on mount: its initial state, the stored value over it, then what
// loading the fields does (here: the schema stored, as the server's fields are not known): matching columns
// from the schema when none, values from the fields' defaults when none, and no null or unknown value.
function resourceMapperForm(property, stored) {
  const options = (property.typeOptions && property.typeOptions.resourceMapper) || {};
  const mapper = {
    mappingMode: 'defineBelow', value: {}, matchingColumns: [], schema: [], attemptToConvertTypes: false,
    convertFieldsToString: options.showTypeConversionOptions === true,
    ...(stored && typeof stored === 'object' ? stored : {}),
  };
  if (!Array.isArray(mapper.schema)) mapper.schema = [];
  if (!Array.isArray(mapper.matchingColumns) || mapper.matchingColumns.length === 0) {
    mapper.matchingColumns = mapper.schema.length === 1 ? [mapper.schema[0].id]
      : mapper.schema.filter((field) => field.defaultMatch).map((field) => field.id);
  }
  if (!mapper.value || Object.keys(mapper.value).length === 0) {
    mapper.value = {};
    for (const field of mapper.schema) {
      const fallback = field.type === 'boolean' ? false : null;
      const preset = field.defaultValue === undefined ? fallback : field.defaultValue;
      mapper.value[field.id] = field.removed ? null : preset;
    }
  }
  const ids = new Set(mapper.schema.map((field) => field.id));
  for (const key of Object.keys(mapper.value)) {
    if (mapper.value[key] === null || !ids.has(key)) delete mapper.value[key];
  }
  return mapper;
}

function resourceMappers(node, type) {
  for (const property of type.properties) {
    if (property.type !== 'resourceMapper' || !(property.name in node.parameters)) continue;
    if (!NodeHelpers.displayParameter(node.parameters, property, node, type)) continue;
    node.parameters[property.name] = resourceMapperForm(property, node.parameters[property.name]);
  }
}

// n8n-editor-ui's closestNumberDivisibleBy(value, GRID_SIZE), which the workflows store applies to every node's
// position when it sets a workflow's nodes: a negative value goes to the nearest multiple (a tie away from zero),
// a positive one up to the next.
const GRID_SIZE = 16;
function onGrid(value) {
  const quotient = Math.ceil(value / GRID_SIZE);
  const first = GRID_SIZE * quotient;
  const second = value * GRID_SIZE > 0 ? GRID_SIZE * (quotient + 1) : GRID_SIZE * (quotient - 1);
  return Math.abs(value - first) < Math.abs(value - second) ? first : second;
}

function editorForm(workflow) {
  const out = JSON.parse(JSON.stringify(workflow));
  for (const node of out.nodes || []) {
    if (Array.isArray(node.position)) node.position = node.position.map(onGrid);
    const type = description(node.type, node.typeVersion);
    if (type === null) continue;
    node.parameters = NodeHelpers.getNodeParameters(type.properties, node.parameters || {}, true, false, node,
      type) || {};
    conditionsTypeValidation(node);
    resourceMappers(node, type);
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
