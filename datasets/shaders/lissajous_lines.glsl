// Line art: several sine curves y = A sin(f x + phase) drawn as anti-aliased strokes.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = kd_rot(6.2831 * iParams[0].w) * ((fragCoord - 0.5 * iResolution.xy) / iResolution.y);
    vec3 col = kd_palette(0.9) * 0.15;
    int lines = 3 + int(iParams[0].x * 8.0);
    for (int i = 0; i < 11; i++) {
        if (i >= lines) break;
        float fi = float(i);
        float freq = 2.0 + 12.0 * kd_hash11(fi + iTime);
        float amp = 0.05 + 0.3 * kd_hash11(fi * 1.7 + iTime);
        float offset = (fi / float(lines) - 0.5) * 0.8;
        float y = offset + amp * sin(freq * uv.x + 6.2831 * kd_hash11(fi * 3.3 + iTime));
        float width = 0.005 + 0.02 * iParams[0].y;
        col = mix(col, kd_palette(fi * 0.13 + iParams[0].z), smoothstep(width, width * 0.3, abs(uv.y - y)));
    }
    fragColor = vec4(col, 1.0);
}
