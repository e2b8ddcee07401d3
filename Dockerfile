# Build stage: all dependencies (TypeScript is a dev dependency) and the sources -> dist/.
FROM node:20-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY scripts/build.mjs ./scripts/
COPY src ./src
RUN npm run build

# Runtime: production dependencies, the built JavaScript (with the Lua scripts beside it) and the
# migrations, which dist/db/migrate.js finds at ../../drizzle. No TypeScript loader runs the service.
FROM node:20-slim
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY --from=build /app/dist ./dist
COPY drizzle ./drizzle
# Only for the operator commands (npm run db:migrate / db:status / db:rollback / token), which
# still run their TypeScript through tsx (a runtime dependency); the service does not use these.
COPY tsconfig.json ./
COPY src ./src
COPY scripts/token.ts scripts/db.ts ./scripts/
USER node
EXPOSE 8000
# node directly (not npm) so SIGTERM from the runtime reaches the process that drains and flushes.
CMD ["node", "dist/server.js"]
