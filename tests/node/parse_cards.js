// Parse Adaptive Cards with Microsoft's own `adaptivecards` package, as a Teams client would,
// targeting schema version 1.4 (the highest Workflows accept), and print the problems found.
//
// Input on stdin: a JSON array of Workflows payloads (or bare cards). Output on stdout: a JSON
// array with, per card, the list of messages from parsing and from validateProperties(); an
// empty list means the card parsed cleanly. Parsing needs no DOM, rendering would: we parse.
"use strict";
const path = require("path");
// The package's "main" is ES modules without file extensions, which node cannot load; the
// dist bundle is the same code as one UMD file.
const AC = require(path.join(__dirname, "node_modules", "adaptivecards", "dist", "adaptivecards.js"));

function problems(payload) {
  let card = payload;
  if (payload && payload.type === "message") {
    card = payload.attachments[0].content;
  }
  const found = [];
  if (card.version !== "1.4") {
    found.push(`card version is ${JSON.stringify(card.version)}, not "1.4"`);
  }
  const context = new AC.SerializationContext(AC.Versions.v1_4);
  const parsed = new AC.AdaptiveCard();
  parsed.parse(card, context);
  for (let i = 0; i < context.eventCount; i++) {
    found.push(`parse: ${context.getEventAt(i).message}`);
  }
  for (const event of parsed.validateProperties().validationEvents) {
    found.push(`validate: ${event.message}`);
  }
  return found;
}

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const cards = JSON.parse(input);
  process.stdout.write(JSON.stringify(cards.map(problems)) + "\n");
});
