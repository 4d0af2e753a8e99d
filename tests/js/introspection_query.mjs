// Prints graphql-js's standard introspection query, with every option tools turn on
// (descriptions, specifiedByURL, directive isRepeatable, schema description, deprecated
// input values), so the server is tested with the exact text GraphiQL and codegen send.
import { getIntrospectionQuery } from 'graphql';

process.stdout.write(
  getIntrospectionQuery({
    descriptions: true,
    specifiedByUrl: true,
    directiveIsRepeatable: true,
    schemaDescription: true,
    inputValueDeprecation: true,
  }),
);
