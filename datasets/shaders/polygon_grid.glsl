// A grid of rotating regular polygons (3-8 sides) from signed distance functions, with outlines.
float polygon(vec2 p, float n, float r) {
    float a = atan(p.x, p.y) + 3.14159;
    float wedge = 6.2831 / n;
    return cos(floor(0.5 + a / wedge) * wedge - a) * length(p) - r;
}
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = fragCoord / iResolution.y * (2.0 + 6.0 * iParams[0].x) + iMouse.xy;
    vec2 id = floor(uv);
    vec2 f = fract(uv) - 0.5;
    float h = kd_hash21(id + iTime);
    float sides = floor(3.0 + 6.0 * h);
    vec2 q = kd_rot(6.2831 * kd_hash21(id * 1.3) + iTime) * f;
    float d = polygon(q, sides, 0.2 + 0.2 * iParams[0].y);
    vec3 bg = kd_palette(0.8) * 0.2;
    vec3 fill = kd_palette(h);
    vec3 col = mix(bg, fill, smoothstep(0.02, 0.0, d));
    col = mix(col, vec3(1.0), smoothstep(0.03, 0.0, abs(d)) * iParams[0].z);
    fragColor = vec4(col, 1.0);
}
