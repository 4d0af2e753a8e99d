// Reads an introspection result (JSON on stdin) and checks that graphql-js accepts it as a
// schema (buildClientSchema), as GraphiQL and codegen do; prints the schema's SDL.
import { buildClientSchema, printSchema } from 'graphql';
import { readFileSync } from 'node:fs';

const result = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const schema = buildClientSchema(result.data);
process.stdout.write(printSchema(schema));
