// Voronoi diagram (Worley 1996 F1): flat-coloured cells with dark borders from F2 - F1.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = fragCoord / iResolution.y * (3.0 + 9.0 * iParams[0].x) + iTime;
    vec2 g = floor(uv);
    vec2 f = fract(uv);
    float d1 = 8.0; float d2 = 8.0; vec2 best = vec2(0.0);
    for (int j = -1; j <= 1; j++) {
        for (int i = -1; i <= 1; i++) {
            vec2 o = vec2(float(i), float(j));
            vec2 r = o + 0.5 + (0.3 + 0.7 * iParams[0].y) * (kd_hash22(g + o) - 0.5) - f;
            float d = dot(r, r);
            if (d < d1) { d2 = d1; d1 = d; best = g + o; } else if (d < d2) { d2 = d; }
        }
    }
    vec3 col = kd_palette(kd_hash21(best) * (0.3 + iParams[0].z));
    col *= smoothstep(0.0, 0.04 + 0.12 * iParams[0].w, sqrt(d2) - sqrt(d1));
    fragColor = vec4(col, 1.0);
}
