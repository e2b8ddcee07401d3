/**
 * The pino options of the service, shared by server.ts (its start-up logger, created before the
 * app) and buildApp. Level from config; credentials never logged.
 */
import type { LoggerOptions } from 'pino'
import type { Config } from './config.ts'

export function loggerOptions(config: Config): LoggerOptions {
  return {
    level: config.logLevel,
    redact: {
      paths: ['req.headers.authorization', 'req.headers.cookie', 'headers.authorization'],
      censor: '[redacted]',
    },
  }
}
