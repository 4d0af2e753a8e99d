// GraphiQL wired to Parley: queries and mutations over POST /graphql with the headers of
// the "Headers" tab, subscriptions over /graphql/ws (graphql-transport-ws) with the same
// Authorization header sent as connectionParams. Signed in on the chat page (/)? The token
// it keeps is filled in as the default Authorization header.

(function () {
  'use strict';
  const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/graphql/ws`;

  function operationKind(params, opts) {
    const doc = opts && opts.documentAST;
    if (doc && Array.isArray(doc.definitions)) {
      const ops = doc.definitions.filter((d) => d.kind === 'OperationDefinition');
      const op = ops.find((d) => d.name && d.name.value === params.operationName) || ops[0];
      if (op) return op.operation;
    }
    return /^\s*subscription\b/.test(params.query || '') ? 'subscription' : 'query';
  }

  function authorization(headers) {
    for (const [name, value] of Object.entries(headers || {})) {
      if (name.toLowerCase() === 'authorization') return String(value);
    }
    return undefined;
  }

  async function* subscribe(params, headers) {
    const auth = authorization(headers);
    const client = graphqlWs.createClient({
      url: wsUrl,
      connectionParams: auth ? { Authorization: auth } : {},
      retryAttempts: 0,
    });
    try {
      for await (const result of client.iterate(params)) yield result;
    } finally {
      client.dispose();
    }
  }

  async function post(params, headers) {
    const response = await fetch('/graphql', {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'application/graphql-response+json, application/json;q=0.9',
        ...headers,
      },
      body: JSON.stringify(params),
    });
    return response.json();
  }

  function fetcher(params, opts) {
    const headers = (opts && opts.headers) || {};
    if (operationKind(params, opts) === 'subscription') return subscribe(params, headers);
    return post(params, headers);
  }

  const token = localStorage.getItem('parley.token');
  const defaultHeaders = JSON.stringify(
    token ? { Authorization: `Bearer ${token}` } : { Authorization: 'Bearer <token from login or register>' },
    null,
    2,
  );
  const defaultQuery = `# Parley's API. Sign in with the "Headers" tab (Authorization: Bearer <token>),
# e.g. with the token of:
#   mutation { login(username: "alice", password: "…") { token } }
# The Docs panel (top left) lists every type and field.

query Me {
  __typename
}
`;
  const root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(
    React.createElement(GraphiQL, {
      fetcher,
      defaultQuery,
      defaultHeaders,
      shouldPersistHeaders: false,
      defaultEditorToolsVisibility: 'headers',
    }),
  );
})();
