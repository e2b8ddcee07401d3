/** The Lua scripts of the Redis store (scripts/*.lua; each file's header documents its keys and arguments). */
import { LuaScript } from './lua-script.ts'

export const SCRIPTS = {
  decide: LuaScript.fromFile('decide', 'decide-entry', 'decide-run'),
  seed: LuaScript.fromFile('seed'),
  reset: LuaScript.fromFile('reset'),
  ack: LuaScript.fromFile('ack'),
  read: LuaScript.fromFile('read'),
  restoreKey: LuaScript.fromFile('restore-key'),
  legacyRead: LuaScript.fromFile('legacy-v1-read'),
  legacyAck: LuaScript.fromFile('legacy-v1-ack'),
  repairMarks: LuaScript.fromFile('repair-marks'),
}
