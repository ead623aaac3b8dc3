/**
 * A small valid topology as plain data (the DESIGN.md §5 example): two nodes, two groups in one
 * consistency set. Fresh on every call, so a test can bend it into a bad shape.
 */
// Fixtures are plain objects that each test mutates freely.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type ConfigFixture = any;

export function twoSiteConfig(): ConfigFixture {
  return {
    secret: 'file-secret',
    nodes: {
      siteA: {
        dataDir: './var/siteA',
        nbd: '127.0.0.1:10809',
        link: '127.0.0.1:7701',
        api: '127.0.0.1:7801',
        volumes: { db: '256MiB', log: '64MiB' },
      },
      siteB: {
        dataDir: './var/siteB',
        nbd: '127.0.0.1:10810',
        link: '127.0.0.1:7702',
        api: '127.0.0.1:7802',
        volumes: { db: '256MiB', log: '64MiB' },
      },
    },
    groups: {
      'g-db': { source: 'siteA', target: 'siteB', pairs: { db: 'db' } },
      'g-log': { source: 'siteA', target: 'siteB', pairs: { log: 'log' } },
    },
    consistencySets: { bank: ['g-db', 'g-log'] },
  };
}
