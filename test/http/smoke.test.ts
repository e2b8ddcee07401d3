import t from 'tap'
import { buildTestApp } from '../helpers/app.ts'

t.test('a guarded deploy, status and check-limit answer through inject', async (t) => {
  const { app, user } = await buildTestApp(t)
  const u = user()
  const deploy = await app.inject({ method: 'POST', url: '/api/deploy', headers: u.headers })
  t.equal(deploy.statusCode, 201)
  t.equal(deploy.headers['ratelimit-remaining'], '9')
  const status = await app.inject({ method: 'GET', url: '/api/usage/status', headers: u.headers })
  t.equal(status.json().metrics.deployments.current, 1)
})
