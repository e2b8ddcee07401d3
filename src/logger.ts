/**
 * The pino options of the service, shared by server.ts (its start-up logger, created before the
 * app) and buildApp. Level from config; credentials never logged; pretty at a terminal.
 */
import type { LoggerOptions } from 'pino'
import type { Config } from './config.ts'

/**
 * Pretty, coloured lines for a person at a terminal (pino-pretty, in pino's worker thread); one
 * JSON object per line otherwise (a pipe, a file, a log collector) and always in production.
 */
export function wantsPrettyLogs(env: NodeJS.ProcessEnv = process.env, stdoutIsTty = process.stdout.isTTY === true): boolean {
  return stdoutIsTty && env.NODE_ENV !== 'production'
}

export function loggerOptions(config: Config, pretty: boolean = wantsPrettyLogs()): LoggerOptions {
  return {
    level: config.logLevel,
    redact: {
      paths: ['req.headers.authorization', 'req.headers.cookie', 'headers.authorization'],
      censor: '[redacted]',
    },
    ...(pretty
      ? { transport: { target: 'pino-pretty', options: { colorize: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' } } }
      : {}),
  }
}
