FROM node:20-slim
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
# Dev dependencies are not needed to run: tsx (a runtime dependency) loads the TypeScript sources.
RUN npm ci --omit=dev
COPY tsconfig.json ./
COPY src ./src
COPY drizzle ./drizzle
COPY scripts/token.ts scripts/db.ts ./scripts/
USER node
EXPOSE 8000
# node directly (not npm) so SIGTERM from the runtime reaches the process that drains and flushes.
CMD ["node", "--import", "tsx", "src/server.ts"]
